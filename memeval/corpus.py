"""An on-disk index of a training corpus's character n-grams, built by streaming the corpus.

Used to check whether generated text appears verbatim in the training data without holding the
corpus in memory: every `n`-character window of every document is hashed (64-bit BLAKE2b) into an
SQLite table. A candidate is found when any of its own n-character windows is in the table (a
64-bit hash collision could make a false match; at 10^9 windows its chance is about 3e-2 per
10^8 lookups, so matches are reported with the window text for a person to confirm).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

INSERT_BATCH = 20_000


def window_hash(window: str) -> int:
    return int.from_bytes(hashlib.blake2b(window.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def windows(text: str, n: int) -> Iterator[str]:
    for start in range(len(text) - n + 1):
        yield text[start:start + n]


def corpus_fingerprint(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:24]


class CorpusIndex:
    """Character n-gram membership for one corpus; build once, query many times."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = path, n
        self._conn = sqlite3.connect(path)

    @classmethod
    def open_or_build(cls, directory: Path, fingerprint: str, n: int, texts: Iterable[str]) -> CorpusIndex:
        """The index for this corpus and n, built from `texts` (streamed once) unless it exists."""
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{fingerprint}-{n}.sqlite"
        if not final.exists():
            handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{fingerprint}-", suffix=".sqlite")
            os.close(handle)
            try:
                build(Path(tmp), n, texts)
                os.replace(tmp, final)  # atomic: a killed build leaves no half index behind
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return cls(final, n)

    def find(self, text: str) -> str | None:
        """The first n-character window of `text` that occurs in the corpus, or None."""
        by_hash: dict[int, str] = {}
        for window in windows(text, self.n):
            by_hash.setdefault(window_hash(window), window)
        hashes = list(by_hash)
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found = {row[0] for row in self._conn.execute(f"SELECT h FROM windows WHERE h IN ({marks})", chunk)}
            for h in chunk:
                if h in found:
                    return by_hash[h]
        return None

    def size(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM windows").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def build(path: Path, n: int, texts: Iterable[str]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE windows (h INTEGER PRIMARY KEY) WITHOUT ROWID")
    pending: list[tuple[int]] = []
    for text in texts:
        pending.extend((window_hash(w),) for w in windows(text, n))
        if len(pending) >= INSERT_BATCH:
            conn.executemany("INSERT OR IGNORE INTO windows VALUES (?)", pending)
            pending.clear()
    conn.executemany("INSERT OR IGNORE INTO windows VALUES (?)", pending)
    conn.commit()
    conn.close()
