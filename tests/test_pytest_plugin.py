"""The pytest plugin: suite files collected as tests, one per gate, run through memeval's runner.

Each test runs pytest on a small suite with `pytester` (in-process, so the tiny recipe model is
trained once into the session cache and `memeval.runner.run_item` can be counted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO, TINY_RECIPE, read_run, tiny_texts, write_jsonl

pytest_plugins = ["pytester"]

EVALUATIONS = """
  - id: train-loss
    method: lm.loss
    model: tiny
    dataset: train
    gates:
      - {metric: loss_mean, max: 100}
      - {metric: perplexity_mean, min: 1.0}
  - id: unseen-loss
    method: lm.loss
    model: tiny
    dataset: unseen
  - id: train-extract
    method: extraction.discoverable
    model: tiny
    dataset: train
    params: {prefix_tokens: 8, suffix_tokens: 4}
    gates: [{metric: extractable_rate, min: 0}]
  - id: forecast
    method: extraction.forecast
    params: {source: {evaluation: train-extract}, target: {evaluation: train-extract}}
    gates: [{metric: n_target_memorized, min: 0}]
"""


def write_suite(where: Path, evaluations: str = EVALUATIONS, name: str = "suite.yaml") -> Path:
    """The tiny suite of tests/conftest.py (same data and recipe, so the same cached model)."""
    path = where / name
    write_jsonl(path.parent / "data" / "train.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(tiny_texts())])
    write_jsonl(path.parent / "data" / "unseen.jsonl", [{"id": f"u{i}", "text": f"zq{i} wx vb {i * 7}"} for i in range(12)])
    body = textwrap.dedent(f"""\
        memeval: 1
        suite: tiny
        datasets:
          train: {{loader: jsonl, path: data/train.jsonl, id_field: id}}
          unseen: {{loader: jsonl, path: data/unseen.jsonl, id_field: id}}
        models:
          tiny: {json.dumps(TINY_RECIPE)}
        evaluations:
        """) + textwrap.dedent(evaluations).strip("\n") + "\n"
    path.write_text(body, encoding="utf-8")
    return path


MEMBERSHIP = """
  - id: membership
    method: membership.attack
    model: tiny
    dataset: train
    params: {non_members: unseen, attacks: [loss], blind_baseline: false}
    gates: [{metric: loss_auc, min: 0}]
"""


@pytest.fixture(scope="module")
def warm(cache_dir, tmp_path_factory):
    """Run every method these tests use once, outside pytester. pytester's in-process runs drop
    the modules they import when they end, and numpy or torch cannot be imported twice; imported
    here first, they stay. This also trains the tiny model into the session cache."""
    from memeval.cli import main

    suite = write_suite(tmp_path_factory.mktemp("warm"), EVALUATIONS + MEMBERSHIP)
    assert main(["run", str(suite), "--out", str(suite.parent / "run"), "-q"]) == 0


@pytest.fixture
def suite_dir(pytester, warm):
    """pytester's directory (the model cache is the session's)."""
    assert pytester._request.config.pluginmanager.has_plugin("memeval"), (
        "the memeval pytest11 entry point is not loaded: reinstall (pip install -e .), and look for a "
        "stale memeval.egg-info in the working directory hiding the installed metadata")
    return pytester.path


@pytest.fixture
def runs(monkeypatch) -> Counter:
    """How often memeval ran each evaluation (pytester runs in this process)."""
    import memeval.runner

    counts: Counter = Counter()
    real = memeval.runner.run_item

    def counting(session, item):
        counts[item.id] += 1
        return real(session, item)

    monkeypatch.setattr(memeval.runner, "run_item", counting)
    return counts


def test_each_gate_is_a_test_and_each_evaluation_runs_once(pytester, suite_dir, runs):
    write_suite(suite_dir)
    result = pytester.runpytest("suite.yaml", "-v", "--memeval-out", "run")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "suite.yaml::train-loss::loss_mean<=100 PASSED*",
        "suite.yaml::train-loss::perplexity_mean>=1 PASSED*",
        "suite.yaml::unseen-loss PASSED*",  # no gates: one item, passes when the evaluation ran
        "suite.yaml::train-extract::extractable_rate>=0 PASSED*",
        "suite.yaml::forecast::n_target_memorized>=0 PASSED*",  # reads train-extract's records
        "*memeval*",
        f"suite.yaml: 4 evaluations ran; run directory {suite_dir / 'run'}",
    ])
    # One memeval run for the suite: every evaluation once, two gates or none.
    assert runs == {"train-loss": 1, "unseen-loss": 1, "train-extract": 1, "forecast": 1}
    run = read_run(suite_dir / "run")
    assert [e["id"] for e in run["evaluations"]] == ["train-loss", "unseen-loss", "train-extract", "forecast"]
    assert run["status"] == "completed" and run["exit_code"] == 0
    assert (suite_dir / "run" / "records" / "train-loss.jsonl").exists()


def test_a_tightened_gate_fails_with_value_ci_and_threshold_and_junit_has_them(pytester, suite_dir):
    write_suite(suite_dir, """
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {metric: loss_mean, max: 100}
          - {metric: loss_mean, max: 0.01}
    """)
    result = pytester.runpytest("suite.yaml", "--memeval-out", "run", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    metrics = {m["name"]: m for m in read_run(suite_dir / "run")["evaluations"][0]["metrics"]}
    loss, median = metrics["loss_mean"], metrics["loss_median"]
    value, low, high = (f"{loss[k]:.6g}" for k in ("value", "ci_low", "ci_high"))
    lines = result.stdout.lines
    start = lines.index(f"loss_mean = {value} is above the maximum 0.01")
    assert "train-loss: gate loss_mean<=0.01" in lines[start - 1]
    assert lines[start + 1:start + 6] == [
        "  evaluation: train-loss (lm.loss, model tiny, dataset train, 40 samples)",
        f"  metric:     loss_mean = {value}, 95% CI [{low}, {high}] (bootstrap-percentile(mean), n=40)",
        "  gate:       loss_mean <= 0.01 (suite.yaml:15)",
        "  other metrics:",
        f"    loss_median = {median['value']:.6g}, 95% CI [{median['ci_low']:.6g}, {median['ci_high']:.6g}] "
        "(bootstrap-percentile(median), n=40)"]
    assert f"  records:    {suite_dir / 'run' / 'records' / 'train-loss.jsonl'}" in lines
    result.stdout.fnmatch_lines([f"FAILED suite.yaml::train-loss::loss_mean<=0.01 - loss_mean = {value} is above*"])
    assert "Traceback" not in result.stdout.str() and "pytest_plugin.py" not in result.stdout.str()

    cases = {case.get("name"): case for case in ET.parse(suite_dir / "junit.xml").iter("testcase")}
    assert set(cases) == {"loss_mean<=100", "loss_mean<=0.01"}
    failed = cases["loss_mean<=0.01"]
    assert failed.find("failure") is not None and cases["loss_mean<=100"].find("failure") is None
    # Named as memeval's own junit reporter names them.
    props = {p.get("name"): p.get("value") for p in failed.iter("property")}
    assert props["evaluation"] == "train-loss" and props["method"] == "lm.loss" and props["metric"] == "loss_mean"
    assert props["rule"] == "<= 0.01" and float(props["threshold"]) == 0.01 and props["n_samples"] == "40"
    assert float(props["value"]) == loss["value"]
    assert float(props["ci_low"]) == loss["ci_low"] and float(props["ci_high"]) == loss["ci_high"]
    for name, metric in metrics.items():
        assert float(props[f"metric.{name}"]) == metric["value"]
        assert float(props[f"metric.{name}.ci_low"]) == metric["ci_low"]
    assert props["run_dir"] == str(suite_dir / "run")


def test_k_selects_evaluations_by_id(pytester, suite_dir, runs):
    write_suite(suite_dir)
    result = pytester.runpytest("suite.yaml", "-k", "unseen-loss", "--memeval-out", "run")
    result.assert_outcomes(passed=1, deselected=4)
    assert runs == {"unseen-loss": 1}
    assert [e["id"] for e in read_run(suite_dir / "run")["evaluations"]] == ["unseen-loss"]

    # A selected evaluation reading the records of a deselected one fails as `memeval run -k` does.
    result = pytester.runpytest("suite.yaml", "-k", "forecast", "--memeval-out", "run2")
    result.assert_outcomes(errors=1, deselected=4)
    result.stdout.fnmatch_lines(["memeval stopped the run: in evaluation 'forecast': evaluation 'train-extract' "
                                 "has not run successfully in this session*"])
    # Selecting both works: memeval's own keywords (method, model, dataset) match too.
    result = pytester.runpytest("suite.yaml", "-k", "extraction", "--memeval-out", "run3")
    result.assert_outcomes(passed=2, deselected=3)


def test_options_reach_the_memeval_run(pytester, suite_dir, tiny_model_dir):
    write_suite(suite_dir)
    result = pytester.runpytest("suite.yaml", "-k", "train-loss", "--memeval-out", "run", "--memeval-seed", "7",
                                "--memeval-limit", "5", "--memeval-cache", "off",
                                "--memeval-model", f"tiny={tiny_model_dir}")
    result.assert_outcomes(passed=2, deselected=3)
    run = read_run(suite_dir / "run")
    assert run["suite"]["seed"] == 7 and run["config"]["cache_mode"] == "off"
    assert run["models"]["tiny"]["adapter"] == "hf-causal" and run["evaluations"][0]["n_samples"] == 5
    assert pytester.runpytest("suite.yaml", "--memeval-seed", "-1").ret == pytest.ExitCode.USAGE_ERROR


def test_baseline_gates_compare_against_memeval_baseline(pytester, suite_dir):
    write_suite(suite_dir, """
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates: [{metric: loss_mean, max: 100}]
    """)
    pytester.runpytest("suite.yaml", "--memeval-out", "base").assert_outcomes(passed=1)
    write_suite(suite_dir, """
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates: [{metric: loss_mean, max_increase: 0, max_decrease: 0}]
    """)
    result = pytester.runpytest("suite.yaml", "-v", "--memeval-baseline", "base", "--memeval-out", "run")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["suite.yaml::train-loss::loss_mean:increase<=0,decrease<=0 PASSED*"])
    assert read_run(suite_dir / "run")["evaluations"][0]["gates"][0]["baseline_value"] is not None


def test_an_errored_evaluation_errors_its_items_and_warnings_reach_pytest(pytester, suite_dir):
    write_suite(suite_dir, textwrap.dedent("""
      - id: train-extract
        method: extraction.discoverable
        model: tiny
        dataset: train
        params: {prefix_tokens: 8, suffix_tokens: 4}
      - id: unseen-extract
        method: extraction.discoverable
        model: tiny
        dataset: unseen
        params: {prefix_tokens: 8, suffix_tokens: 4}
      - id: disjoint-forecast
        method: extraction.forecast
        params: {source: {evaluation: train-extract}, target: {evaluation: unseen-extract}}
        gates: [{metric: n_target_memorized, min: 0}, {metric: forecast_recall, max: 1}]
    """) + textwrap.dedent(MEMBERSHIP))
    result = pytester.runpytest("suite.yaml", "-rA")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of disjoint-forecast: gate n_target_memorized>=0*",
        "evaluation 'disjoint-forecast' (extraction.forecast) errored: "
        "ValueError: the source and target evaluations share no sample ids",
        "Traceback (most recent call last):",  # the method's traceback, as run.json keeps it
    ])
    # The evaluation's warnings are pytest warnings, located at the evaluation in the suite file.
    result.stdout.fnmatch_lines(["  suite.yaml:24: MemevalWarning: membership: only 12 non-members: *"])


def test_only_suites_that_were_asked_for_are_collected(pytester, suite_dir):
    write_suite(suite_dir, name="suites/gates.yaml")
    write_suite(suite_dir, name="elsewhere/gates.yaml")
    (suite_dir / "suites" / "settings.yaml").write_text("memeval_version: 1\nname: not a suite\n")
    (suite_dir / "suites" / "notes.txt").write_text("memeval: 1\n")

    # Without the ini option, only a suite named on the command line is collected.
    assert pytester.runpytest("--collect-only", "-q").ret == pytest.ExitCode.NO_TESTS_COLLECTED
    named = pytester.runpytest("--collect-only", "-q", "suites/gates.yaml")
    named.stdout.fnmatch_lines(["suites/gates.yaml::train-loss::loss_mean<=100", "*5 tests collected*"])

    # With it, suites under the pattern are collected; the other YAML file is not a suite.
    pytester.makeini('[pytest]\nmemeval_suite_files = suites/*.yaml\n')
    found = pytester.runpytest("--collect-only", "-q")
    found.stdout.fnmatch_lines(["suites/gates.yaml::forecast::n_target_memorized>=0", "*5 tests collected*"])
    assert "elsewhere" not in found.stdout.str() and "settings" not in found.stdout.str()
    # `-m "not memeval"` leaves them out.
    assert pytester.runpytest("--collect-only", "-q", "-m", "not memeval").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_broken_suite_is_a_collection_error_with_file_and_line(pytester, suite_dir):
    write_suite(suite_dir, """
      - id: train-loss
        method: lm.los
        model: tiny
        dataset: train
    """)
    (suite_dir / "syntax.yaml").write_text("memeval: 1\nsuite: [unclosed\n")
    result = pytester.runpytest("suite.yaml", "syntax.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting suite.yaml*",
        "suite.yaml:10: evaluations[0].method: unknown method 'lm.los'; did you mean 'lm.loss'?",
        "*ERROR collecting syntax.yaml*",
        "syntax.yaml:3: invalid YAML: *",
    ])
    assert "Traceback" not in result.stdout.str()


def test_the_plugin_is_inert_in_other_projects(tmp_path):
    """Loaded in every pytest session: it must import nothing heavy and collect nothing unasked."""
    write_suite(tmp_path)
    (tmp_path / "test_other.py").write_text(textwrap.dedent("""\
        import sys

        def test_nothing_heavy_was_imported(request):
            assert request.config.pluginmanager.has_plugin("memeval")
            heavy = {"torch", "numpy", "transformers", "datasets", "memeval.runner", "memeval.suite"}
            assert not heavy & set(sys.modules)
        """))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "suite.yaml" not in proc.stdout


def test_cache_modes_are_memevals():
    from memeval.cache import MODES
    from memeval.pytest_plugin import CACHE_MODES

    assert CACHE_MODES == MODES


def test_the_shipped_suites_collect_under_pytest_suites(pytester, warm):
    """memeval's own ini sets `memeval_suite_files`, so `pytest suites/` finds every gate."""
    result = pytester.runpytest("--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"), str(REPO / "suites"),
                                "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*suites/famous-texts.yaml::*", "*suites/quickstart.yaml::canary-loss::loss_mean<=1",
                                 "*suites/quickstart.yaml::canary-exposure::exposure_max>=10"])


@pytest.mark.slow
def test_pytest_runs_the_quickstart(tmp_path, cache_dir):
    """`pytest suites/quickstart.yaml` for real: every gate passes; tightened, one fails."""
    import yaml

    evaluations = yaml.safe_load((REPO / "suites/quickstart.yaml").read_text())["evaluations"]
    gates = sum(len(e.get("gates", [])) or 1 for e in evaluations)
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache_dir)}
    env.pop("PYTEST_ADDOPTS", None)

    def pytest_(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    run = pytest_("suites/quickstart.yaml", "--memeval-out", tmp_path / "qs")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{gates} passed" in run.stdout
    assert len(read_run(tmp_path / "qs")["evaluations"]) == len(evaluations)

    strict = tmp_path / "strict.yaml"
    text = (REPO / "suites/quickstart.yaml").read_text().replace("{metric: loss_mean, max: 1.0}",
                                                                  "{metric: loss_mean, max: 0.0}")
    strict.write_text(text.replace("path: data/", f"path: {REPO}/suites/data/"))
    failed = pytest_(strict, "--memeval-out", tmp_path / "strict")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"1 failed, {gates - 1} passed" in failed.stdout
    assert "is above the maximum 0" in failed.stdout and "95% CI [" in failed.stdout
