"""Gates: a metric against a fixed threshold, or against the same metric in a saved run."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from memeval.results import EvaluationResult, GateVerdict, Metric, RunDir
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


def rule_text(gate: GateSpec) -> str:
    """The gate's rule as it reads: '>= 0.9', '>= 0.3 and <= 1 on ci_high', 'increase <= 0.01'."""
    parts = [f">= {gate.min:g}" if gate.min is not None else "", f"<= {gate.max:g}" if gate.max is not None else "",
             f"increase <= {gate.max_increase:g}" if gate.max_increase is not None else "",
             f"decrease <= {gate.max_decrease:g}" if gate.max_decrease is not None else ""]
    rule = " and ".join(p for p in parts if p)
    return f"{rule} at {gate.at}" if gate.at != "value" else rule


def not_judged(gate: GateSpec, reason: str) -> GateVerdict:
    """The verdict of a gate whose evaluation errored: counted as an error, never as a pass."""
    return GateVerdict(gate.metric, False, rule_text(gate), None, message=reason, errored=True)


def judge(gate: GateSpec, result: EvaluationResult, suite: SuiteFile) -> GateVerdict:
    metric = result.metric(gate.metric)
    value = metric.value if metric is not None else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GateVerdict(gate.metric, False, "value is a number", value, message=f"{gate.metric} was not computed")
    judged = value if gate.at == "value" else getattr(metric, gate.at)
    what = gate.metric if gate.at == "value" else f"the {gate.at} of {gate.metric}"
    if (gate.min is not None or gate.max is not None) and (judged is None or math.isnan(judged)):
        return GateVerdict(gate.metric, False, rule_text(gate), value,
                           message=f"{gate.metric} has no CI, so {what} cannot be judged")
    threshold = gate.max if gate.max is not None else gate.min
    if gate.min is not None and judged < gate.min:
        return GateVerdict(gate.metric, False, rule_text(gate), value, gate.min,
                           message=f"{what} = {judged:.6g} is below the minimum {gate.min:g}")
    if gate.max is not None and judged > gate.max:
        return GateVerdict(gate.metric, False, rule_text(gate), value, gate.max,
                           message=f"{what} = {judged:.6g} is above the maximum {gate.max:g}")
    if gate.baseline is not None:
        return _judge_against_baseline(gate, value, result.id, suite.saved_run(gate.baseline))
    return GateVerdict(gate.metric, True, rule_text(gate), value, threshold, note=fragility(gate, metric))


def fragility(gate: GateSpec, metric: Metric) -> str:
    """A warning when a gate judged on the value passes although its CI reaches past a threshold:
    the verdict could flip on another sample of the data."""
    if gate.at != "value" or metric.ci_low is None or metric.ci_high is None:
        return ""
    crossed = [t for t in (gate.min, gate.max) if t is not None and metric.ci_low < t < metric.ci_high]
    if not crossed:
        return ""
    level = f"{metric.ci_level:.0%} " if metric.ci_level else ""
    bound = "ci_high" if gate.max is not None and gate.max in crossed else "ci_low"
    return (f"gate {gate.metric} {rule_text(gate)} passes at {metric.value:.4g}, but its {level}CI "
            f"[{metric.ci_low:.4g}, {metric.ci_high:.4g}] crosses {crossed[0]:g}: the verdict could flip on "
            f"other samples (a gate with at: {bound} requires the whole CI)")


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
