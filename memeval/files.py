"""Files memeval writes: complete under their final name or not there at all, and the operating
system's refusals (read-only, full, too long a name) turned into errors that say what to do."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from memeval.errors import EnvironmentProblem


def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
REMEDIES = {
    errno.EROFS: "the file system is read-only; point memeval at a writable place",
    errno.EACCES: "permission denied; point memeval at a directory you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; point memeval at a directory you can write to",
    errno.ENOSPC: "the disk is full; free some space or point memeval at another disk",
    errno.EDQUOT: "the disk quota is exceeded; free some space or point memeval at another disk",
    errno.ENAMETOOLONG: "the file name is too long for the file system; use a shorter id or path",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "the path is a directory, not a file",
}


def environment_problem(exc: OSError, what: str = "") -> EnvironmentProblem | None:
    """The user-facing error for an OSError the environment caused, or None for any other."""
    remedy = REMEDIES.get(exc.errno or 0)
    if remedy is None:
        return None
    path = exc.filename or ""
    doing = f"{what}: " if what else ""
    where = f" {str(path)!r}" if path else ""
    return EnvironmentProblem(f"{doing}cannot write{where} ({os.strerror(exc.errno or 0)}): {remedy}")


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write `path` through a temporary file in the same directory, renamed into place only when
    the block finishes; on any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(mode, encoding=None if "b" in mode else encoding, dir=path.parent,  # noqa: SIM115 - closed below, renamed after
                                         prefix=f".{path.name}.", suffix=".part", delete=False)
    try:
        os.chmod(handle.name, FILE_MODE)  # as an ordinary open() would make it, not mkstemp's 0600
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name it
            exc.filename = str(path)
        raise


def write_text(path: Path, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    with atomic_writer(path) as handle:
        handle.write(text)
    return Path(path)


def remove_partials(directory: Path) -> int:
    """Remove the temporary files an interrupted `atomic_writer` left in `directory`."""
    removed = 0
    for leftover in directory.glob(".*.part") if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on `path` for the block: a directory itself, or a lock file
    (created if needed). With blocking=False, yields False at once when another process holds it.
    The operating system releases it when the process dies, so a killed run never leaves it held."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


MANIFEST = ".sha256.json"  # hidden, so loaders that glob a model's *.json files never read it


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_once(final: Path, build: Callable[[Path], None], log: Callable[[str], None],
               before_build: Callable[[], None] | None = None) -> bool:
    """Make sure `final` is a complete, undamaged directory that `build(work)` makes, and say whether
    this call built it. It is built in a temporary sibling and renamed into place with a checksum of
    every file, under a lock, so two processes build it once; one whose files fail their checksums
    is built again, never used; a killed build's temporary directory is removed by the next."""
    if intact(final, log):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{final.name}.lock"):
        if intact(final, lambda message: None):  # another process built it while we waited
            return False
        for stale in final.parent.glob(f".{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if before_build is not None:
            before_build()
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(work)
            files = sorted(p for p in work.rglob("*") if p.is_file())
            (work / MANIFEST).write_text(json.dumps({str(p.relative_to(work)): sha256_file(p) for p in files}))
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return True


def intact(directory: Path, log: Callable[[str], None]) -> bool:
    """Whether a directory made by `build_once` is there whole: every file it stored has its hash."""
    try:
        stored = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or not stored:
        if directory.exists():
            log(f"{directory}: stored without a readable checksum list; building it again")
        return False
    for name, digest in stored.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            log(f"{directory}: {name} does not match its stored checksum (a damaged cache); "
                f"building it again, never using it")
            return False
    return True
