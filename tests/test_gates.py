"""gates.judge on its own: fixed bounds, baselines, and values that cannot pass."""

from __future__ import annotations

import json
import math

import pytest

from memeval.gates import judge
from memeval.results import EvaluationResult, Metric
from memeval.suite import GateSpec, Suite, SuiteFile


@pytest.fixture
def suite(tmp_path) -> SuiteFile:
    return SuiteFile(path=tmp_path / "suite.yaml", spec=Suite(memeval=1, suite="s", evaluations=[]))


def result(value: float | None, metric: str = "m", evaluation: str = "e") -> EvaluationResult:
    metrics = [] if value is None else [Metric(metric, value)]
    return EvaluationResult(id=evaluation, method="x.y", model=None, dataset=None, params={}, metrics=metrics)


def saved_run(directory, metrics: dict[str, float], evaluation: str = "e", schema: int = 1):
    directory.mkdir(parents=True, exist_ok=True)
    run = {"schema_version": schema, "evaluations": [
        {"id": evaluation, "metrics": [{"name": k, "value": v} for k, v in metrics.items()]}]}
    (directory / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return str(directory)


def test_min_is_inclusive_and_a_value_below_fails_with_the_numbers(suite):
    gate = GateSpec(metric="m", min=0.5)
    assert judge(gate, result(0.5), suite).passed
    verdict = judge(gate, result(0.25), suite)
    assert not verdict.passed and verdict.rule == ">= 0.5" and verdict.threshold == 0.5 and verdict.value == 0.25
    assert verdict.message == "m = 0.25 is below the minimum 0.5"


def test_max_is_inclusive_and_a_value_above_fails_with_the_numbers(suite):
    gate = GateSpec(metric="m", max=1.0)
    assert judge(gate, result(1.0), suite).passed
    verdict = judge(gate, result(1.5), suite)
    assert not verdict.passed and verdict.rule == "<= 1" and verdict.threshold == 1.0
    assert verdict.message == "m = 1.5 is above the maximum 1"


def test_a_passing_range_gate_states_both_bounds(suite):
    verdict = judge(GateSpec(metric="m", min=0.1, max=0.9), result(0.5), suite)
    assert verdict.passed and verdict.rule == ">= 0.1 and <= 0.9" and verdict.message == ""
    assert not judge(GateSpec(metric="m", min=0.1, max=0.9), result(0.95), suite).passed


@pytest.mark.parametrize("value", [math.nan, None])
def test_nan_or_missing_metric_fails_even_a_gate_any_number_would_pass(suite, value):
    gate = GateSpec(metric="m", min=-1e300, max=1e300)
    verdict = judge(gate, result(value), suite)
    assert not verdict.passed and verdict.message == "m was not computed" and verdict.rule == "value is a number"


def test_a_metric_of_another_name_does_not_count(suite):
    verdict = judge(GateSpec(metric="m", max=1.0), result(0.0, metric="other"), suite)
    assert not verdict.passed and verdict.message == "m was not computed"


def test_max_increase_against_a_saved_run(suite, tmp_path):
    base = saved_run(tmp_path / "base", {"m": 0.5})
    gate = GateSpec(metric="m", baseline=base, max_increase=0.25)
    within = judge(gate, result(0.75), suite)  # exactly the allowed increase
    assert within.passed and within.baseline_value == 0.5 and within.rule == "increase <= 0.25"
    verdict = judge(gate, result(0.875), suite)
    assert not verdict.passed and verdict.baseline_value == 0.5 and verdict.threshold == 0.25
    assert verdict.message == "m rose by 0.375 (from 0.5 to 0.875), more than 0.25"
    assert judge(gate, result(0.0), suite).passed  # a fall is no increase


def test_max_decrease_against_a_saved_run(suite, tmp_path):
    base = saved_run(tmp_path / "base", {"m": 2.0})
    gate = GateSpec(metric="m", baseline=base, max_decrease=0.5)
    assert judge(gate, result(1.5), suite).passed
    verdict = judge(gate, result(1.0), suite)
    assert not verdict.passed and verdict.rule == "decrease <= 0.5"
    assert verdict.message == "m fell by 1 (from 2 to 1), more than 0.5"


def test_both_directions_at_once(suite, tmp_path):
    base = saved_run(tmp_path / "base", {"m": 1.0})
    gate = GateSpec(metric="m", baseline=base, max_increase=0.5, max_decrease=0.25)
    assert judge(gate, result(1.5), suite).rule == "increase <= 0.5 and decrease <= 0.25"
    assert not judge(gate, result(1.625), suite).passed
    assert not judge(gate, result(0.5), suite).passed


def test_a_baseline_without_the_metric_or_the_evaluation_fails(suite, tmp_path):
    base = saved_run(tmp_path / "base", {"other": 1.0})
    verdict = judge(GateSpec(metric="m", baseline=base, max_increase=1.0), result(0.5), suite)
    assert not verdict.passed
    assert verdict.message == f"baseline {tmp_path / 'base' / 'run.json'} has no metric 'm' for evaluation 'e'"
    renamed = judge(GateSpec(metric="other", baseline=base, max_increase=1.0),
                    result(0.5, metric="other", evaluation="renamed"), suite)
    assert not renamed.passed and "for evaluation 'renamed'" in renamed.message


def test_a_fixed_bound_is_judged_before_the_baseline(suite, tmp_path):
    base = saved_run(tmp_path / "base", {"m": 0.9})
    verdict = judge(GateSpec(metric="m", max=0.5, baseline=base, max_increase=1.0), result(0.95), suite)
    assert not verdict.passed and verdict.message == "m = 0.95 is above the maximum 0.5"


def test_a_relative_baseline_path_is_read_from_the_suite_directory(suite, tmp_path):
    saved_run(tmp_path / "runs" / "old", {"m": 0.5})
    verdict = judge(GateSpec(metric="m", baseline="runs/old", max_increase=0.0), result(0.5), suite)
    assert verdict.passed and verdict.baseline_value == 0.5
