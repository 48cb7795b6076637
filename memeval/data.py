"""Datasets through Hugging Face `datasets`: jsonl/json, csv, parquet, text files, hub names."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from memeval import hookimpl
from memeval.errors import UsageError, did_you_mean
from memeval.registry import Registry
from memeval.sample import Sample
from memeval.suite import DatasetSpec, SuiteFile

FILE_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "text": "text"}


Loader = Callable[[DatasetSpec, SuiteFile], Any]


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # failures become UsageErrors


def data_files(spec: DatasetSpec, suite: SuiteFile) -> list[Path]:
    """The local files a file loader reads (a file, a directory's files, or a glob)."""
    path = suite.resolve_path(spec.path)
    if any(ch in spec.path for ch in "*?["):
        return sorted(p for p in path.parent.glob(path.name) if p.is_file())
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def no_data_files(spec: DatasetSpec, suite: SuiteFile) -> str:
    """Why a path gives no data files: what is there instead (a pipe, a device, an empty directory)."""
    path = suite.resolve_path(spec.path)
    shown = repr(str(path))
    if any(ch in spec.path for ch in "*?["):
        return f"the pattern {shown} matches no regular file"
    if not path.exists():
        return f"data file {shown} does not exist"
    if path.is_dir():
        return (f"data directory {shown} is empty" if not any(path.iterdir())
                else f"data directory {shown} holds no regular, non-hidden file")
    mode = path.stat().st_mode
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"data file {shown} is {kind}, not a regular file; memeval reads data only from regular files"


def file_loader(builder: str) -> Loader:
    def load(spec: DatasetSpec, suite: SuiteFile) -> Any:
        import datasets

        _quiet_datasets()
        files = data_files(spec, suite)
        if all(f.stat().st_size == 0 for f in files):
            raise UsageError("the dataset is empty (0 rows)")
        try:
            return datasets.load_dataset(builder, data_files={spec.split: [str(f) for f in files]},
                                         split=spec.split)
        except Exception as exc:  # datasets raises many kinds; all mean the file is unreadable
            found = diagnose(files, builder)
            if found is not None:
                raise found from None
            raise UsageError(f"cannot read {builder} data {[str(f) for f in files]}: {exc or repr(exc)}") from None

    load.__doc__ = f"local {builder} files through datasets.load_dataset({builder!r})"
    return load


def diagnose(files: list[Path], builder: str) -> UsageError | None:
    """The first thing wrong in data files that a loader refused (or that decoded badly): bytes that
    are not UTF-8 (file, line, byte offset) or, for JSON lines, a line that is not JSON (file, line)."""
    for path in files:
        offset = 0
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return UsageError(f"byte {offset + exc.start} (0x{line[exc.start]:02x}) is not UTF-8; data "
                                      f"files must be UTF-8 text", file=str(path), line=number)
                if builder == "json" and text.strip() and not _is_json(text):
                    return UsageError("this line is not JSON (JSON lines data holds one JSON object a line)",
                                      file=str(path), line=number)
                offset += len(line)
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def hub_loader(spec: DatasetSpec, suite: SuiteFile) -> Any:
    """a dataset from the Hugging Face hub (needs network; HF_DATASETS_OFFLINE=1 forbids it)"""
    import datasets

    _quiet_datasets()
    try:
        return datasets.load_dataset(spec.path, spec.config, split=spec.split, revision=spec.revision)
    except Exception as exc:
        raise UsageError(f"cannot load hub dataset {spec.path!r}: {exc}") from None


def builtin_loaders() -> dict[str, Loader]:
    loaders: dict[str, Loader] = {name: file_loader(builder) for name, builder in FILE_BUILDERS.items()}
    loaders["hub"] = hub_loader
    return loaders


def rows_to_samples(rows: Any, spec: DatasetSpec, suite: SuiteFile, name: str, seed: int) -> list[Sample]:
    """Check the named fields exist and turn rows into samples (limit and shuffle applied)."""
    samples = list(iter_samples(rows, spec, suite, name, seed))
    if not samples:
        raise suite.error(("datasets", name), "the dataset is empty (0 rows)")
    return samples


def iter_samples(rows: Any, spec: DatasetSpec, suite: SuiteFile, name: str, seed: int) -> Iterator[Sample]:
    """The samples of `rows` one at a time (limit and shuffle applied; the rows stay in the
    memory-mapped Arrow table). The named fields are checked now, each row as it is read."""
    columns = list(getattr(rows, "column_names", None) or [])
    for key in ("text_field", "prefix_field", "suffix_field", "tokens_field", "id_field"):
        wanted = getattr(spec, key)
        if wanted is not None and columns and wanted not in columns:
            raise suite.error(("datasets", name, key),
                              f"column {wanted!r} is not in the data{did_you_mean(wanted, columns)} "
                              f"(columns: {', '.join(columns)})")
    if spec.shuffle:
        rows = rows.shuffle(seed=seed)
    if spec.limit is not None and len(rows) > spec.limit:
        rows = rows.select(range(spec.limit))
    return _samples(rows, spec, suite, name)


def _samples(rows: Any, spec: DatasetSpec, suite: SuiteFile, name: str) -> Iterator[Sample]:
    try:
        for index, row in enumerate(_rows(rows)):
            yield _sample(row, index, spec)
    except UsageError as exc:
        raise suite.error(("datasets", name), exc.message) from None
    except UnicodeDecodeError:  # Arrow keeps undecodable bytes until a row is read
        found = diagnose(data_files(spec, suite), FILE_BUILDERS.get(spec.loader, "")) if spec.loader in FILE_BUILDERS else None
        raise found or suite.error(("datasets", name), "the data holds text that is not UTF-8") from None


def _rows(rows: Any) -> Iterator[dict[str, Any]]:
    """The rows in order. A dataset that is exactly its Arrow cache files (no shuffle, selection,
    format or features to decode) is read from them a record batch at a time: through the memory
    map `datasets` reads by, every page read stays in the process's resident memory, which then
    grows with the data (10 MB for 20,000 rows of 64 token ids)."""
    files = _arrow_files(rows)
    if files is None:
        yield from rows
        return
    import pyarrow as pa

    for path in files:
        with pa.OSFile(path) as source:
            for batch in pa.ipc.open_stream(source):
                yield from batch.to_pylist()


def _arrow_files(rows: Any) -> list[str] | None:
    """The Arrow stream files that hold `rows` whole and in order, else None."""
    from datasets.features.features import require_decoding

    files = [f["filename"] for f in getattr(rows, "cache_files", None) or []]
    if not files or getattr(rows, "_indices", None) is not None or rows.format.get("type") is not None:
        return None
    if any(require_decoding(feature) for feature in rows.features.values()):
        return None
    import pyarrow as pa

    total = 0
    for path in files:  # counted through a map closed at once: only the batches' headers are read
        with pa.memory_map(path) as source:
            total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return files if total == len(rows) else None


def _sample(row: dict[str, Any], index: int, spec: DatasetSpec) -> Sample:
    for key in ("text_field", "prefix_field", "suffix_field"):
        column = getattr(spec, key)
        if column is not None and not isinstance(row[column], str):
            raise UsageError(f"row {index}: column {column!r} should hold text, got {row[column]!r}")
    if spec.tokens_field is not None and not (
            isinstance(row[spec.tokens_field], list) and all(isinstance(t, int) for t in row[spec.tokens_field])):
        raise UsageError(f"row {index}: column {spec.tokens_field!r} should hold a list of token ids")
    used = {spec.text_field, spec.prefix_field, spec.suffix_field, spec.tokens_field, spec.id_field}
    sample_id = str(row[spec.id_field]) if spec.id_field else str(index)
    return Sample(
        id=sample_id,
        text=row[spec.text_field] if spec.text_field else None,
        prefix=row[spec.prefix_field] if spec.prefix_field else None,
        suffix=row[spec.suffix_field] if spec.suffix_field else None,
        tokens=list(row[spec.tokens_field]) if spec.tokens_field else None,
        meta={k: v for k, v in row.items() if k not in used and _is_plain(v)})


def _is_plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def stream_texts(rows: Any, spec: DatasetSpec) -> Iterator[str]:
    """The text of each row, one at a time (rows stay in the memory-mapped Arrow table)."""
    count = len(rows) if spec.limit is None else min(spec.limit, len(rows))
    ordered = _rows(rows)
    for index in range(count):
        try:
            row = next(ordered)
        except UnicodeDecodeError:
            raise UsageError(f"row {index} holds text that is not UTF-8") from None
        if spec.text_field is not None:
            text = row[spec.text_field]
        elif spec.prefix_field is not None:
            text = f"{row[spec.prefix_field] or ''}{row[spec.suffix_field] or ''}"
        else:
            continue  # token-id rows have no text to index
        if isinstance(text, str):
            yield text


def fingerprint(samples: list[Sample]) -> str:
    """Content hash of what a recipe model is trained on: the texts (or token ids) in order; ids and
    other columns do not change the model."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample.full_text, sample.tokens]).encode())
    return digest.hexdigest()


def iter_texts(samples: list[Sample]) -> Iterator[str]:
    for sample in samples:
        text = sample.full_text
        if text is not None:
            yield text


@hookimpl
def memeval_register(registry: Registry) -> None:
    for name, loader in builtin_loaders().items():
        registry.add_loader(name, loader)
