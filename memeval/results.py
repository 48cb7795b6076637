"""Result records: metrics, gate verdicts, evaluation and run results (the `run.json` schema), the run
directory and its streamed records.

Versioned like Inspect's eval logs: bump RUN_SCHEMA_VERSION on any change a reader would notice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import math
import re
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, overload

from memeval.errors import UsageError
from memeval.files import write_text

RUN_SCHEMA_VERSION = 1


@dataclass
class Metric:
    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    ci_method: str | None = None
    n: int | None = None
    higher_is_worse: bool | None = None
    description: str = ""


@dataclass
class GateVerdict:
    metric: str
    passed: bool
    rule: str
    value: float | None
    threshold: float | None = None
    baseline_value: float | None = None
    message: str = ""
    errored: bool = False  # not judged: the evaluation errored (a failure, never a pass)
    note: str = ""         # e.g. a verdict the metric's CI could flip


@dataclass
class EvaluationResult:
    id: str
    method: str
    model: str | None
    dataset: str | None
    params: dict[str, Any]
    status: str = "passed"  # passed | failed | error
    n_samples: int = 0
    metrics: list[Metric] = field(default_factory=list)
    gates: list[GateVerdict] = field(default_factory=list)
    records_path: str | None = None
    model_calls: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    truncated: int = 0  # samples whose text, prompt or suffix a cut shortened (see the warnings)
    artifacts: dict[str, Any] = field(default_factory=dict)  # curves and tables for reporters
    error: str | None = None
    started_at: str | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0  # building the model (training a recipe, loading weights) before the first batch
    base_id: str | None = None  # the evaluation's id in the suite, when it is one cell of a matrix
    matrix: dict[str, Any] = field(default_factory=dict)  # that cell's values (model's and evaluation's)

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        known = {"method": "", "model": None, "dataset": None, "params": {}, **_known(cls, data)}
        known["metrics"] = [Metric(**_known(Metric, m)) for m in data.get("metrics", [])]
        known["gates"] = [GateVerdict(**_known(GateVerdict, g)) for g in data.get("gates", [])]
        return cls(**known)


@dataclass
class RunResult:
    suite: dict[str, Any]
    config: dict[str, Any]
    models: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    evaluations: list[EvaluationResult] = field(default_factory=list)
    status: str = "running"  # running | completed | interrupted | error
    exit_code: int | None = None
    error: str | None = None  # what stopped the run, when it did not complete
    failures: list[str] = field(default_factory=list)  # plugin hooks and reporters that raised (exit 3)
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float = 0.0
    baseline: dict[str, Any] | None = None  # the saved run compared against (--baseline) and the deltas
    aggregates: list[dict[str, Any]] = field(default_factory=list)  # matrix cells that differ only by seed
    schema_version: int = RUN_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The inverse of `to_dict`, for re-rendering and comparing saved runs."""
        known = {"suite": {}, "config": {}, **_known(cls, data)}
        known["evaluations"] = [EvaluationResult.from_dict(e) for e in data.get("evaluations", [])]
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def verdict(self) -> dict[str, Any]:
        """The run at a glance: PASSED, FAILED (k of n gates), ERROR or INTERRUPTED, with the counts."""
        gates = [g for e in self.evaluations for g in e.gates]
        failed = sum(not g.passed and not g.errored for g in gates)
        errored = sum(g.errored for g in gates)
        errors = sum(e.status == "error" for e in self.evaluations)
        if self.status == "interrupted":
            label = "INTERRUPTED"
        elif self.status == "error" or errors or self.failures:
            label = "ERROR"
        elif failed:
            label = "FAILED"
        elif not self.evaluations:
            label = "NOTHING RAN"
        else:
            label = "PASSED"
        return {"label": label, "exit_code": self.exit_code, "gates": len(gates), "failed": failed,
                "errored": errored, "passed": len(gates) - failed - errored, "errored_evaluations": errors}

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


RUN_JSON = "run.json"
RECORDS_DIR = "records"
MAX_NAME = 200  # characters of a records file's stem: well under the 255 bytes of common file systems
SAFE_NAME = re.compile(r"[A-Za-z0-9_.,=\[\]-]+")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.,=\[\]-]")


class Records(Sequence[dict[str, Any]]):
    """An evaluation's records, read from `records/<id>.jsonl` when they are needed (never all held in
    memory): iterate it as often as needed, take its `len`, index or slice it (each record read from
    the file through an index of line offsets, built on first use: 8 bytes a record), or take the
    `top(n, key)`. A last line without its newline is a write cut short, not a record."""

    def __init__(self, path: Path | None):
        self.path = path
        self._offsets = array("q")  # where each record's line starts
        self._indexed = 0  # bytes of the file the offsets cover

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, line in self._lines(0):
            yield json.loads(line)

    def __len__(self) -> int:
        return len(self._index())

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        offsets = self._index()
        if isinstance(index, slice):
            return [self._read(offsets[i]) for i in range(*index.indices(len(offsets)))]
        return self._read(offsets[index])

    def top(self, n: int, key: Callable[[dict[str, Any]], float],
            where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The n records with the largest key (ties keep file order), in one streaming pass."""
        chosen = (r for r in self if where is None or where(r))
        return heapq.nlargest(n, chosen, key=key)

    def _lines(self, start: int) -> Iterator[tuple[int, bytes]]:
        """(offset, line) of each complete, non-blank line from byte `start` on."""
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, "rb") as handle:
            handle.seek(start)
            offset = start
            for line in handle:
                if not line.endswith(b"\n"):
                    return
                if line.strip():
                    yield offset, line
                offset += len(line)

    def _index(self) -> array:
        """The line offsets, extended over what was appended since they were last taken."""
        size = self.path.stat().st_size if self.path is not None and self.path.is_file() else 0
        if size != self._indexed:
            if size < self._indexed:  # rewritten: start over
                self._offsets, self._indexed = array("q"), 0
            for offset, line in self._lines(self._indexed):
                self._offsets.append(offset)
                self._indexed = offset + len(line)
        return self._offsets

    def _read(self, offset: int) -> dict[str, Any]:
        assert self.path is not None  # an empty index has no offset to read
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return json.loads(handle.readline())


@dataclass(frozen=True)
class RunDir:
    """A run directory: `run.json` and `records/<evaluation id>.jsonl`. The one place that knows
    those names."""

    directory: Path
    run_json: Path

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """A run directory, or a run's JSON file (its directory holds the records)."""
        path = Path(path).expanduser()
        if path.suffix == ".json":
            return cls(path.parent, path)
        return cls(path, path / RUN_JSON)

    def exists(self) -> bool:
        return self.run_json.is_file()

    def records_file(self, evaluation_id: str) -> Path:
        return self.directory / self.records_ref(evaluation_id)

    @staticmethod
    def records_ref(evaluation_id: str) -> str:
        """The records file of an evaluation, relative to the run directory (`records_path`): its
        id, or for an id no file system takes as a name (a matrix cell's values may hold any
        character and length) a safe, shortened form made unique by a hash of the id."""
        name = evaluation_id
        if not SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME:
            digest = hashlib.sha256(evaluation_id.encode()).hexdigest()[:12]
            name = f"{UNSAFE_CHARS.sub('_', name)[:MAX_NAME - 13]}-{digest}"
        return f"{RECORDS_DIR}/{name}.jsonl"

    def records(self, evaluation: EvaluationResult) -> Records:
        return Records(self.directory / evaluation.records_path if evaluation.records_path else None)

    def read(self) -> dict[str, Any]:
        """run.json as a dict, checked to be a run of the schema version this memeval reads.
        Raises FileNotFoundError or ValueError."""
        data = json.loads(self.run_json.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.run_json}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema_version") != RUN_SCHEMA_VERSION:
            raise ValueError(f"{self.run_json}: run schema version {data.get('schema_version')!r}, "
                             f"this memeval reads {RUN_SCHEMA_VERSION}")
        if not isinstance(data.get("evaluations"), list):
            raise ValueError(f"{self.run_json}: it has no list of evaluations")
        return data

    def load(self) -> RunResult:
        """The saved run; a missing or unreadable one is a usage error naming the path."""
        try:
            return RunResult.from_dict(self.read())
        except FileNotFoundError:
            raise UsageError(f"{self.directory}: no {self.run_json.name} there (is it a memeval run "
                             f"directory?)") from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise UsageError(f"{self.directory}: not a readable memeval run (this memeval reads schema "
                             f"version {RUN_SCHEMA_VERSION}): {exc}") from None


def run_directories(suites: list[str], base: str | None) -> list[Path]:
    """One run directory per suite: --out itself for one suite, --out/<stem> for several (stems made
    unique), else memeval-runs/<stem>-<time> (made unique if it exists)."""
    stems: list[str] = []
    for suite in suites:
        stem, n = Path(suite).stem, 2
        while stem in stems:
            stem, n = f"{Path(suite).stem}-{n}", n + 1
        stems.append(stem)
    if base:
        return [Path(base)] if len(suites) == 1 else [Path(base) / stem for stem in stems]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dirs = []
    for stem in stems:
        path, n = Path("memeval-runs") / f"{stem}-{stamp}", 2
        while path.exists():
            path, n = Path("memeval-runs") / f"{stem}-{stamp}-{n}", n + 1
        dirs.append(path)
    return dirs
