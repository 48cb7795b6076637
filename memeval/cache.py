"""SQLite cache of model outputs, keyed by model identity + operation + params + input.

Every batch of outputs is committed as soon as it is computed (WAL journal), so a run that is
killed and started again recomputes nothing it finished. Methods that need the same outputs (the
same token log-probs of the same sequences under the same model) share one computation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memeval.errors import CacheMiss, UsageError
from memeval.options import CACHE_MODES

MODES = CACHE_MODES
CACHE_FORMAT = 1  # bump when the stored value layout changes; old entries then stop matching


def default_cache_dir() -> Path:
    env = os.environ.get("MEMEVAL_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memeval"


def output_key(model_id: str, op: str, params: dict[str, Any], ids: Iterable[int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, model_id, op, params], sort_keys=True).encode())
    digest.update(np.asarray(list(ids), dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass
class CallCounter:
    """What a model did for one evaluation: sequences computed, cache hits, forward batches."""

    computed: int = 0
    cache_hits: int = 0
    batches: int = 0

    def snapshot(self) -> dict[str, int]:
        return {"computed": self.computed, "cache_hits": self.cache_hits, "batches": self.batches}


@dataclass
class OutputCache:
    directory: Path
    mode: str = "use"
    _conn: sqlite3.Connection | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "off":
            if self.directory.exists() and not self.directory.is_dir():
                raise UsageError(f"cache directory {self.directory}: exists and is not a directory")
            self.directory.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.directory / "outputs.sqlite", timeout=60)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS outputs (
                    key TEXT PRIMARY KEY, model TEXT NOT NULL, op TEXT NOT NULL,
                    value BLOB NOT NULL, created REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS file_digests (
                    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
                """
            )
            self._conn.commit()

    @property
    def reads(self) -> bool:
        return self._conn is not None and self.mode in ("use", "only")

    @property
    def writes(self) -> bool:
        return self._conn is not None and self.mode in ("use", "refresh")

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        if not self.reads or not keys:
            return {}
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(f"SELECT key, value FROM outputs WHERE key IN ({marks})", chunk)
            found.update(rows)
        return found

    def put_many(self, model_id: str, op: str, items: list[tuple[str, bytes]]) -> None:
        """Store one batch of outputs and commit it."""
        if not self.writes or not items:
            return
        now = time.time()
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO outputs (key, model, op, value, created) VALUES (?, ?, ?, ?, ?)",
                [(key, model_id, op, value, now) for key, value in items])

    def count(self) -> int:
        if self._conn is None:
            return 0
        return self._conn.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]

    def require(self, missing: int, what: str) -> None:
        if self.mode == "only" and missing:
            raise CacheMiss(f"--cache only: {missing} {what} not in the cache at {self.directory}")

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, remembered by (path, size, mtime) so big checkpoints hash once."""
        stat = path.stat()
        resolved = str(path.resolve())
        if self._conn is not None:
            row = self._conn.execute("SELECT size, mtime_ns, sha256 FROM file_digests WHERE path = ?",
                                     (resolved,)).fetchone()
            if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
                return row[2]
        digest = sha256_file(path)
        if self._conn is not None:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                                   (resolved, stat.st_size, stat.st_mtime_ns, digest))
        return digest

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
