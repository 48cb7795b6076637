"""`memeval compare` and `memeval run --baseline`: changes, their CIs, and regressions by direction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import REPO, read_run, run_memeval
from scipy import stats

from memeval.compare import MetricDelta, _paired_ci, verdict
from memeval.method import MetricSpec


def test_paired_ci_matches_scipy_paired_bootstrap(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(2.0, 0.5, 300)
    new = base - 0.1 + rng.normal(0, 0.05, 300)  # paired: a small shift, large sample-to-sample spread
    for name, values in (("base", base), ("new", new)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "loss": v}) + "\n"
                                                        for i, v in enumerate(values)))
    from memeval.results import Records

    low, high, n = _paired_ci(Records(tmp_path / "base.jsonl"), Records(tmp_path / "new.jsonl"),
                              MetricSpec("loss_mean", "", False, "loss"), seed=0)
    reference = stats.bootstrap((base, new), lambda a, b, axis: b.mean(axis) - a.mean(axis), paired=True,
                                method="percentile", n_resamples=4000, random_state=1).confidence_interval
    assert n == 300
    width = reference.high - reference.low
    assert abs(low - reference.low) < 0.15 * width and abs(high - reference.high) < 0.15 * width
    # Pairing is what makes the shift visible: unpaired, the spread of the samples would hide it.
    assert high < 0 and width < 0.02


@pytest.mark.parametrize(("delta", "higher_is_worse", "ci", "tolerance", "expected"), [
    (0.2, True, (0.1, 0.3), 0.0, "regression"),
    (-0.2, False, (-0.3, -0.1), 0.0, "regression"),       # lower is worse (a loss): a drop is a regression
    (-0.2, True, (-0.3, -0.1), 0.0, "improvement"),
    (0.2, True, (-0.1, 0.5), 0.0, "not significant"),
    (0.2, True, (0.1, 0.3), 0.25, "unchanged"),           # within the gate's tolerance
    (0.2, True, None, 0.1, "regression"),                 # no CI (a count): taken as it is
    (0.2, None, (0.1, 0.3), 0.0, "no direction"),
    (0.0, True, None, 0.0, "unchanged"),
])
def test_verdicts(delta, higher_is_worse, ci, tolerance, expected):
    low, high = ci or (None, None)
    row = MetricDelta("e", "m", 1.0, 1.0 + delta, delta, higher_is_worse, tolerance, "", low, high)
    assert verdict(row) == expected


@pytest.fixture
def two_runs(tiny_suite, run_cli, tmp_path):
    """The tiny suite trained briefly (base) and longer (new): the longer model memorizes more."""
    suite = tiny_suite()
    assert run_cli("run", suite, "--out", tmp_path / "short")[0] == 0
    longer = suite.read_text().replace('"epochs": 4', '"epochs": 30')
    (tmp_path / "longer.yaml").write_text(longer)
    assert run_cli("run", tmp_path / "longer.yaml", "--out", tmp_path / "long")[0] == 0
    return tmp_path / "short", tmp_path / "long"


def test_compare_flags_more_memorization_and_passes_against_itself(two_runs, run_cli):
    short, long = two_runs
    code, out, _ = run_cli("compare", short, long, "--fail-on-regression")
    assert code == 1
    assert "REGRESSION" in out and "train-loss::loss_mean" in out
    code, out, _ = run_cli("compare", long, short, "--fail-on-regression", "--json")
    record = json.loads(out)
    loss = next(r for r in record["rows"] if r["metric"] == "loss_mean")
    assert loss["verdict"] == "improvement" and loss["delta"] > 0 and loss["ci_low"] > 0
    assert loss["n_paired"] == 40 and loss["ci_method"].startswith("paired")
    assert code == 0
    assert run_cli("compare", long, long, "--fail-on-regression")[0] == 0


def test_run_with_baseline_gates_and_reports_the_change(two_runs, tiny_suite, run_cli, tmp_path):
    short, _ = two_runs
    gated = tiny_suite("""
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {metric: loss_mean, max_decrease: 0.05}
    """, name="gated.yaml", extra="report: {json: true, html: true, markdown: true}\n")
    code, _, err = run_cli("validate", gated)
    assert code == 4 and "--baseline" in err
    longer = gated.read_text().replace('"epochs": 4', '"epochs": 30')
    (tmp_path / "gated-long.yaml").write_text(longer)
    code, out, _ = run_cli("run", tmp_path / "gated-long.yaml", "--baseline", short, "--out", tmp_path / "gated")
    assert code == 1 and "fell by" in out
    run = read_run(tmp_path / "gated")
    assert run["baseline"]["regressions"] >= 1
    row = next(r for r in run["baseline"]["rows"] if r["metric"] == "loss_mean")
    assert row["tolerance"] == 0.05 and row["verdict"] == "regression"
    page = (tmp_path / "gated" / "report.html").read_text()
    assert 'data-delta="train-loss/loss_mean"' in page
    regressions = [r for r in run["baseline"]["rows"] if r["verdict"] == "regression"]
    assert f"<b>{len(regressions)} regression(s)</b> among {len(run['baseline']['rows'])} metrics" in page
    table = page[page.index('id="baseline-deltas"'):page.index("</table>", page.index('id="baseline-deltas"'))]
    assert table.count("<tr data-delta=") == len(regressions)  # regressions first, the rest folded away
    assert 'data-verdict="regression"' in table and 'data-verdict="improvement"' not in table
    assert "Against the baseline" in (tmp_path / "gated" / "summary.md").read_text()


def test_incomparable_runs_are_usage_errors(two_runs, tiny_suite, run_cli, tmp_path):
    short, _ = two_runs
    other = tiny_suite(name="other.yaml")
    other.write_text(other.read_text().replace("suite: tiny", "suite: another"))
    assert run_cli("run", other, "--out", tmp_path / "other")[0] == 0
    code, _, err = run_cli("compare", short, tmp_path / "other")
    assert code == 4 and "different suites" in err
    code, _, err = run_cli("run", other, "--baseline", short, "--out", tmp_path / "x")
    assert code == 4 and "a run of suite 'tiny'" in err
    future = json.loads((short / "run.json").read_text()) | {"schema_version": 99}
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "run.json").write_text(json.dumps(future))
    code, _, err = run_cli("compare", short, tmp_path / "future")
    assert code == 4 and "schema version" in err
    assert run_cli("compare", short, tmp_path / "nowhere")[0] == 4


@pytest.mark.slow
def test_quickstart_trained_longer_regresses(quickstart_run, cache_dir, tmp_path):
    """The quickstart's model trained for 10 instead of 30 epochs, against the shipped one."""
    text = (REPO / "suites/quickstart.yaml").read_text().replace("path: data/", f"path: {REPO}/suites/data/")
    assert "training: {epochs: 30," in text
    (tmp_path / "short.yaml").write_text(text.replace("training: {epochs: 30,", "training: {epochs: 10,", 1))
    proc = run_memeval("run", tmp_path / "short.yaml", "--out", tmp_path / "short", "-q", cache=cache_dir)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    proc = run_memeval("compare", tmp_path / "short", quickstart_run, "--json", cache=cache_dir)
    rows = {(r["evaluation"], r["metric"]): r for r in json.loads(proc.stdout)["rows"]}
    canary_loss = rows[("canary-loss", "loss_mean")]
    assert canary_loss["delta"] < 0 and canary_loss["verdict"] == "regression", canary_loss
    assert rows[("canary-exposure", "exposure_mean")]["delta"] > 0
    same = run_memeval("compare", quickstart_run, quickstart_run, "--fail-on-regression", cache=cache_dir)
    assert same.returncode == 0, same.stdout
