"""SQLite cache of model outputs, keyed by model identity + operation + params + input.

Every batch of outputs is committed as soon as it is computed (WAL journal), so a run that is
killed and started again recomputes nothing it finished. Methods that need the same outputs (the
same token log-probs of the same sequences under the same model) share one computation.

Every value is stored with its checksum and checked on read: a value that does not match (a flipped
bit, a torn page) is counted, recomputed and replaced, never used. A file that is not a memeval
cache at all, or that SQLite finds corrupt, stops the run with the way out.
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

from memeval.errors import CacheMiss, EnvironmentProblem
from memeval.files import environment_problem, sha256_file
from memeval.options import CACHE_MODES

MODES = CACHE_MODES
CACHE_FORMAT = 2  # bump when the stored value layout changes; old entries then stop matching


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


def checksum(value: bytes) -> str:
    return hashlib.blake2b(value, digest_size=16).hexdigest()


SCHEMA = """
    CREATE TABLE IF NOT EXISTS outputs (
        key TEXT PRIMARY KEY, model TEXT NOT NULL, op TEXT NOT NULL,
        value BLOB NOT NULL, created REAL NOT NULL, checksum TEXT);
    CREATE TABLE IF NOT EXISTS file_digests (
        path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
"""
OUTPUT_COLUMNS = {"key", "model", "op", "value", "created"}


@dataclass
class OutputCache:
    directory: Path
    mode: str = "use"
    corrupted: int = field(default=0, init=False)  # values whose checksum failed, recomputed instead
    _conn: sqlite3.Connection | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "off":
            self._open()

    @property
    def path(self) -> Path:
        return self.directory / "outputs.sqlite"

    def _open(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise EnvironmentProblem(f"cache directory {str(self.directory)!r} exists and is not a directory; "
                                     f"point --cache-dir (or $MEMEVAL_CACHE_DIR) elsewhere, or run with --cache off")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._check_schema()
            self._conn.commit()
        except OSError as exc:
            raise environment_problem(exc, "output cache") or exc from None
        except sqlite3.Error as exc:
            raise self._problem(exc) from None

    def _check_schema(self) -> None:
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(outputs)")}
        if not columns >= OUTPUT_COLUMNS:
            raise sqlite3.DatabaseError(f"its outputs table has columns {sorted(columns)}, "
                                        f"not memeval's {sorted(OUTPUT_COLUMNS | {'checksum'})}")
        if "checksum" not in columns:  # a cache from before checksums: its values are checked as misses
            self._conn.execute("ALTER TABLE outputs ADD COLUMN checksum TEXT")

    def _problem(self, exc: sqlite3.Error) -> EnvironmentProblem:
        """What to say when SQLite refuses the cache file."""
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            remedy = "make the cache directory writable, point --cache-dir elsewhere, or run with --cache off"
        elif "disk is full" in text or "disk I/O" in text:
            remedy = "free disk space, point --cache-dir at another disk, or run with --cache off"
        else:
            text = f"not a readable memeval cache ({text})"
            remedy = ("move it aside or delete it (memeval makes a new one: its outputs are recomputed), "
                      "point --cache-dir elsewhere, or run with --cache off")
        return EnvironmentProblem(f"output cache {str(self.path)!r}: {text}; {remedy}")

    def _sql(self, query: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(query, tuple(args))
        except sqlite3.Error as exc:
            raise self._problem(exc) from None

    @property
    def reads(self) -> bool:
        return self._conn is not None and self.mode in ("use", "only")

    @property
    def writes(self) -> bool:
        return self._conn is not None and self.mode in ("use", "refresh")

    @property
    def shares(self) -> bool:
        """Whether an output put now is read back by a later call (`use`): what one method computes
        for another is reused."""
        return self.reads and self.writes

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        if not self.reads or not keys:
            return {}
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._sql(f"SELECT key, value, checksum FROM outputs WHERE key IN ({marks})", chunk)
            for key, value, stored in rows.fetchall():
                if isinstance(value, bytes) and stored == checksum(value):
                    found[key] = value
                else:  # recomputed by the caller, and replaced by its put_many
                    self.corrupted += 1
        return found

    def put_many(self, model_id: str, op: str, items: list[tuple[str, bytes]]) -> None:
        """Store one batch of outputs and commit it."""
        if not self.writes or not items:
            return
        now = time.time()
        rows = [(key, model_id, op, value, now, checksum(value)) for key, value in items]
        try:
            with self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO outputs (key, model, op, value, created, checksum) "
                                       "VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise self._problem(exc) from None

    def count(self) -> int:
        if self._conn is None:
            return 0
        return self._sql("SELECT COUNT(*) FROM outputs").fetchone()[0]

    def require(self, missing: int, what: str) -> None:
        if self.mode == "only" and missing:
            raise CacheMiss(f"--cache only: {missing} {what} not in the cache at {self.directory}")

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, remembered by (path, size, mtime) so big checkpoints hash once."""
        stat = path.stat()
        resolved = str(path.resolve())
        if self._conn is not None:
            row = self._sql("SELECT size, mtime_ns, sha256 FROM file_digests WHERE path = ?",
                            (resolved,)).fetchone()
            if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
                return row[2]
        digest = sha256_file(path)
        if self._conn is not None:
            with self._conn:
                self._sql("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                          (resolved, stat.st_size, stat.st_mtime_ns, digest))
        return digest

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
