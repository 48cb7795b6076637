"""The verdict at a glance (PASSED / FAILED / ERROR with gate counts), errored evaluations' gates
counted as errors, and gates on a CI bound."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_browser import browser, open_report  # noqa: F401 - the module-scoped Chromium fixture

from memeval.gates import judge, not_judged
from memeval.results import EvaluationResult, Metric
from memeval.suite import GateSpec, SuiteFile

RED = "rgb(207, 34, 46)"


def _result(value: float, low: float | None, high: float | None) -> EvaluationResult:
    return EvaluationResult(id="e", method="m", model=None, dataset=None, params={},
                            metrics=[Metric("rate", value, low, high, 0.95)])


@pytest.fixture
def suite(tmp_path):
    return SuiteFile(path=tmp_path / "s.yaml", spec=None)  # judge only resolves baselines through it


def test_a_gate_on_ci_high_fails_what_the_value_alone_passes(suite):
    result = _result(0.0, 0.0, 0.37)  # 0 of 8: Clopper-Pearson [0, 0.37]
    on_value = judge(GateSpec(metric="rate", max=0.0), result, suite)
    assert on_value.passed and "crosses 0" not in on_value.note  # the threshold is the CI's edge: no flip
    strict = judge(GateSpec(metric="rate", max=0.0, at="ci_high"), result, suite)
    assert not strict.passed and strict.rule == "<= 0 at ci_high"
    assert strict.message == "the ci_high of rate = 0.37 is above the maximum 0"
    assert judge(GateSpec(metric="rate", min=0.0, at="ci_low"), result, suite).passed


def test_a_pass_inside_the_ci_is_flagged_as_fragile(suite):
    verdict = judge(GateSpec(metric="rate", max=0.2), _result(0.1, 0.02, 0.31), suite)
    assert verdict.passed and "crosses 0.2" in verdict.note and "at: ci_high" in verdict.note
    assert judge(GateSpec(metric="rate", max=0.5), _result(0.1, 0.02, 0.31), suite).note == ""
    no_ci = judge(GateSpec(metric="rate", max=0.5, at="ci_high"), _result(0.1, None, None), suite)
    assert not no_ci.passed and "has no CI" in no_ci.message


def test_at_is_for_min_and_max_only():
    with pytest.raises(ValueError, match="'at' applies to min/max"):
        GateSpec(metric="rate", max_increase=0.1, at="ci_high")


def test_a_gate_not_judged_is_an_error_never_a_pass():
    verdict = not_judged(GateSpec(metric="rate", min=0.5, max=0.9), "not judged: it errored")
    assert not verdict.passed and verdict.errored and verdict.rule == ">= 0.5 and <= 0.9"


EVALUATIONS = """
  - id: too-strict
    method: lm.loss
    model: tiny
    dataset: train
    gates: [{metric: loss_mean, max: 0.0}]
  - id: fine
    method: lm.loss
    model: tiny
    dataset: train
    gates: [{metric: loss_mean, max: 100}]
"""
BROKEN = """
  - id: broken
    method: test.broken
    model: tiny
    dataset: train
    gates: [{metric: x, max: 1}, {metric: x, min: 0}]
"""


def test_an_errored_run_counts_its_gates_as_errors_everywhere(tiny_suite, run_cli, tmp_path, browser):  # noqa: F811
    suite = tiny_suite(EVALUATIONS + BROKEN, extra="report: {formats: [json, html, markdown, junit]}\n")
    out = tmp_path / "run"
    code, stdout, _ = run_cli("run", suite, "--out", out, "-p", "broken_plugin")
    assert code == 3
    assert "=== ERROR:" in stdout and "1/4 gates passed, 2 not judged (evaluation errored)" in stdout
    run = json.loads((out / "run.json").read_text())
    broken = next(e for e in run["evaluations"] if e["id"] == "broken")
    assert [g["errored"] for g in broken["gates"]] == [True, True]
    assert [g["passed"] for g in broken["gates"]] == [False, False]
    root = ET.parse(out / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "2")
    assert "ERROR: memeval tiny, 1 of 4 gates passed, 1 failed, 2 not judged" in (out / "summary.md").read_text()
    page, _ = open_report(browser, out / "report.html")
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-verdict") == "ERROR" and verdict.get_attribute("data-exit-code") == "3"
    assert "1 of 4 gates passed, 1 failed, 2 not judged" in verdict.inner_text()
    assert verdict.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    box = verdict.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 900  # in the first screen
    assert page.locator('tr[data-outcome="error"]').count() == 2
    assert page.locator('tr[data-outcome="failed"]').count() == 1


def test_a_failing_run_says_failed_in_red_first(tiny_suite, run_cli, tmp_path, browser):  # noqa: F811
    suite = tiny_suite(EVALUATIONS, extra="report: {formats: [json, html]}\n")
    out = tmp_path / "run"
    code, stdout, _ = run_cli("run", suite, "--out", out)
    assert code == 1 and "=== FAILED:" in stdout
    page, _ = open_report(browser, out / "report.html")
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-verdict") == "FAILED"
    assert verdict.inner_text().startswith("FAILED") and "1 of 2 gates passed, 1 failed" in verdict.inner_text()
    assert "exit code 1" in verdict.inner_text()
    assert verdict.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    box = verdict.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 900


def test_run_json_prints_the_summary_alone_on_stdout(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite(EVALUATIONS)
    code, stdout, _ = run_cli("run", suite, "--out", tmp_path / "run", "--json")
    summary = json.loads(stdout)  # nothing but the JSON on stdout
    assert code == 1 and summary["exit_code"] == 1
    (run,) = summary["runs"]
    assert run["verdict"]["label"] == "FAILED" and run["verdict"]["failed"] == 1 and run["verdict"]["gates"] == 2
    strict = next(e for e in run["evaluations"] if e["id"] == "too-strict")
    assert strict["gates"][0]["passed"] is False and strict["gates"][0]["rule"] == "<= 0"
    stored = json.loads((tmp_path / "run" / "run.json").read_text())
    assert strict["metrics"]["loss_mean"] == stored["evaluations"][0]["metrics"][0]["value"]
