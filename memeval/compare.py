"""Comparing two runs of one suite: per-metric change, its CI, and whether it is a regression.

A regression is a change towards more memorization (by the metric's declared direction) larger
than the tolerance, and significant: its CI excludes zero. When both runs' records hold the
per-sample values a metric summarises (`MetricSpec.per_sample`), the CI is a paired bootstrap over
the samples both runs share (same ids); otherwise it is a normal approximation from the two
runs' own CIs; a metric with no CI (a count, a maximum) is compared as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memeval.errors import UsageError
from memeval.formatting import number
from memeval.method import MetricSpec
from memeval.registry import Registry
from memeval.results import EvaluationResult, Metric, Records, RunDir, RunResult
from memeval.stats import DEFAULT_LEVEL, paired_bootstrap_ci

VERDICTS = ("regression", "improvement", "not significant", "unchanged", "no direction", "missing")


@dataclass
class MetricDelta:
    evaluation: str
    metric: str
    base: float | None
    new: float | None
    delta: float | None            # new - base
    higher_is_worse: bool | None
    tolerance: float               # allowed change towards more memorization
    verdict: str                   # one of VERDICTS
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str | None = None
    n_paired: int | None = None


@dataclass
class SavedRun:
    """A run loaded from its directory, with the records beside it."""

    run: RunResult
    where: RunDir

    @classmethod
    def load(cls, path: str | Path) -> SavedRun:
        where = RunDir.at(path)
        return cls(where.load(), where)

    @property
    def directory(self) -> Path:
        return self.where.directory

    def records(self, evaluation: EvaluationResult) -> Records:
        return self.where.records(evaluation)


def check_comparable(base: SavedRun, new: SavedRun) -> None:
    names = base.run.suite.get("name"), new.run.suite.get("name")
    if names[0] != names[1]:
        raise UsageError(f"cannot compare runs of different suites: {base.directory} ran {names[0]!r}, "
                         f"{new.directory} ran {names[1]!r}")


def compare_runs(base: SavedRun, new: SavedRun, registry: Registry, tolerance: float = 0.0) -> list[MetricDelta]:
    """Every metric of every evaluation the two runs share. The registry's method classes say which
    metrics can be paired per sample; the new run's baseline gates set the allowed worsening of
    their metrics, `tolerance` that of the others."""
    check_comparable(base, new)
    allowed_by_gate = gate_tolerances(new.run)
    seed = new.run.suite.get("seed") or 0
    old = {e.id: e for e in base.run.evaluations}
    rows = []
    for evaluation in new.run.evaluations:
        before = old.get(evaluation.id)
        method = registry.get("method", evaluation.method) if evaluation.method in registry.names("method") else None
        for metric in evaluation.metrics:
            allowed = allowed_by_gate.get((evaluation.id, metric.name), tolerance)
            previous = before.metric(metric.name) if before is not None else None
            if previous is None:
                rows.append(MetricDelta(evaluation.id, metric.name, None, metric.value, None,
                                        metric.higher_is_worse, allowed, "missing"))
                continue
            spec = _spec(method, metric.name)
            paired = _paired_ci(base.records(before), new.records(evaluation), spec, seed) if spec else None
            rows.append(_delta(evaluation.id, previous, metric, allowed, paired))
    return rows


def _spec(method: Any, name: str) -> MetricSpec | None:
    if method is None:
        return None
    spec = next((m for m in method.metrics if m.name == name), None)
    return spec if spec is not None and spec.per_sample else None


def _delta(evaluation: str, base: Metric, new: Metric, tolerance: float,
           paired: tuple[float, float, int] | None) -> MetricDelta:
    row = MetricDelta(evaluation, new.name, base.value, new.value, None, new.higher_is_worse, tolerance, "unchanged")
    if not _finite(base.value) or not _finite(new.value):
        row.verdict = "missing"
        return row
    row.delta = new.value - base.value
    if paired is not None:
        row.ci_low, row.ci_high, row.n_paired = paired
        row.ci_method = "paired bootstrap over shared samples"
    elif all(_finite(v) for v in (base.ci_low, base.ci_high, new.ci_low, new.ci_high)):
        row.ci_low, row.ci_high = _normal_ci(row.delta, base, new)
        row.ci_method = "normal approximation from both runs' CIs"
    row.verdict = verdict(row)
    return row


def verdict(row: MetricDelta) -> str:
    if row.higher_is_worse is None:
        return "no direction"
    if row.delta == 0:
        return "unchanged"
    worse = row.delta if row.higher_is_worse else -row.delta
    significant = row.ci_low is None or row.ci_low > 0 or row.ci_high < 0
    if worse > row.tolerance:
        return "regression" if significant else "not significant"
    if worse < 0:
        return "improvement" if significant else "not significant"
    return "unchanged"  # worse, but within the tolerance a gate allows


def _normal_ci(delta: float, base: Metric, new: Metric) -> tuple[float, float]:
    level = new.ci_level or DEFAULT_LEVEL
    from scipy import stats  # ~60 MB: imported only when used

    z = stats.norm.ppf(0.5 + level / 2)
    se = math.hypot((base.ci_high - base.ci_low) / (2 * z), (new.ci_high - new.ci_low) / (2 * z))
    return delta - z * se, delta + z * se


def _paired_ci(base: Records, new: Records, spec: MetricSpec, seed: int) -> tuple[float, float, int] | None:
    """Bootstrap CI of statistic(new) - statistic(base) resampling the samples both runs hold."""
    before = {r["id"]: r[spec.per_sample] for r in base if r.get(spec.per_sample) is not None}
    pairs = [(before[r["id"]], r[spec.per_sample]) for r in new
             if r["id"] in before and r.get(spec.per_sample) is not None]
    if len(pairs) < 2:
        return None
    values = np.asarray(pairs, dtype=np.float64)
    statistic = np.median if spec.statistic == "median" else np.mean
    low, high = paired_bootstrap_ci(values[:, 0], values[:, 1], statistic, seed=seed)
    return low, high, len(values)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def gate_tolerances(run: RunResult) -> dict[tuple[str, str], float]:
    """Allowed worsening per (evaluation, metric) from the run's baseline-relative gates: the
    `max_increase` of a higher-is-worse metric, the `max_decrease` of a lower-is-worse one."""
    directions = {(e.id, m.name): m.higher_is_worse for e in run.evaluations for m in e.metrics}
    out = {}
    for evaluation in run.config.get("suite", {}).get("evaluations", []):
        for gate in evaluation.get("gates", []):
            key = (evaluation["id"], gate["metric"])
            worse_up = directions.get(key)
            allowed = gate.get("max_increase") if worse_up else gate.get("max_decrease") if worse_up is False else None
            if allowed is not None:
                out[key] = float(allowed)
    return out


def comparison_record(base: SavedRun, rows: list[MetricDelta]) -> dict[str, Any]:
    """What `run.json` keeps under `baseline` when a run is compared against a saved one."""
    return {"path": str(base.directory), "suite": base.run.suite.get("name"), "started_at": base.run.started_at,
            "rows": [asdict(r) for r in rows],
            "regressions": sum(r.verdict == "regression" for r in rows)}


def format_rows(rows: list[MetricDelta]) -> list[str]:
    lines = []
    for row in rows:
        ci = f" [{number(row.ci_low)}, {number(row.ci_high)}]" if row.ci_low is not None else ""
        paired = f" paired n={row.n_paired}" if row.n_paired else ""
        lines.append(f"{row.verdict.upper() if row.verdict == 'regression' else row.verdict:15} {row.evaluation}::"
                     f"{row.metric}  {number(row.base)} -> {number(row.new)}  change {number(row.delta)}{ci}{paired}")
    return lines
