"""Gates: a metric against a fixed threshold, or against the same metric in a saved run."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from memeval.results import EvaluationResult, GateVerdict, RunDir
from memeval.suite import GateSpec, SuiteFile


@cache
def _baseline(run: RunDir) -> dict[str, Any]:
    return run.read()


def baseline_metric(run: RunDir, evaluation_id: str, metric: str) -> float | None:
    run = _baseline(run)
    for evaluation in run.get("evaluations", []):
        if evaluation["id"] == evaluation_id:
            for m in evaluation.get("metrics", []):
                if m["name"] == metric:
                    return m["value"]
    return None


def judge(gate: GateSpec, result: EvaluationResult, suite: SuiteFile) -> GateVerdict:
    metric = result.metric(gate.metric)
    value = metric.value if metric is not None else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GateVerdict(gate.metric, False, "value is a number", value, message=f"{gate.metric} was not computed")
    if gate.min is not None and value < gate.min:
        return GateVerdict(gate.metric, False, f">= {gate.min:g}", value, gate.min,
                           message=f"{gate.metric} = {value:.6g} is below the minimum {gate.min:g}")
    if gate.max is not None and value > gate.max:
        return GateVerdict(gate.metric, False, f"<= {gate.max:g}", value, gate.max,
                           message=f"{gate.metric} = {value:.6g} is above the maximum {gate.max:g}")
    if gate.baseline is not None:
        return _judge_against_baseline(gate, value, result.id, suite.saved_run(gate.baseline))
    rule = " and ".join(r for r in (gate.min is not None and f">= {gate.min:g}",
                                    gate.max is not None and f"<= {gate.max:g}") if r)
    return GateVerdict(gate.metric, True, rule, value, gate.max if gate.max is not None else gate.min)


def _judge_against_baseline(gate: GateSpec, value: float, evaluation_id: str, run: RunDir) -> GateVerdict:
    base = baseline_metric(run, evaluation_id, gate.metric)
    if base is None:
        return GateVerdict(gate.metric, False, "baseline has the metric", value,
                           message=f"baseline {run.run_json} has no metric {gate.metric!r} for evaluation {evaluation_id!r}")
    delta = value - base
    if gate.max_increase is not None and delta > gate.max_increase:
        return GateVerdict(gate.metric, False, f"increase <= {gate.max_increase:g}", value, gate.max_increase, base,
                           message=f"{gate.metric} rose by {delta:.6g} (from {base:.6g} to {value:.6g}), more than "
                                   f"{gate.max_increase:g}")
    if gate.max_decrease is not None and -delta > gate.max_decrease:
        return GateVerdict(gate.metric, False, f"decrease <= {gate.max_decrease:g}", value, gate.max_decrease, base,
                           message=f"{gate.metric} fell by {-delta:.6g} (from {base:.6g} to {value:.6g}), more than "
                                   f"{gate.max_decrease:g}")
    rule = " and ".join(r for r in (gate.max_increase is not None and f"increase <= {gate.max_increase:g}",
                                    gate.max_decrease is not None and f"decrease <= {gate.max_decrease:g}") if r)
    return GateVerdict(gate.metric, True, rule, value, None, base)
