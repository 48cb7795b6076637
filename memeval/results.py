"""Result records: metrics, gate verdicts, evaluation and run results (the `run.json` schema).

Versioned like Inspect's eval logs: bump RUN_SCHEMA_VERSION on any change a reader would notice.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
    artifacts: dict[str, Any] = field(default_factory=dict)  # curves and tables for reporters
    error: str | None = None
    started_at: str | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0  # building the model (training a recipe, loading weights) before the first batch

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        known = _known(cls, data)
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
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float = 0.0
    baseline: dict[str, Any] | None = None  # the saved run compared against (--baseline) and the deltas
    schema_version: int = RUN_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The inverse of `to_dict`, for re-rendering and comparing saved runs."""
        known = _known(cls, data)
        known["evaluations"] = [EvaluationResult.from_dict(e) for e in data.get("evaluations", [])]
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(path)


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


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a saved run (a run directory or its run.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema_version") != RUN_SCHEMA_VERSION:
        raise ValueError(f"{path}: run schema version {data.get('schema_version')!r}, "
                         f"this memeval reads {RUN_SCHEMA_VERSION}")
    return data
