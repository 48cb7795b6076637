"""`matrix:` on models and evaluations: expansion, ids, seeds, -k, and aggregation over seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from memeval.collect import collect
from memeval.matrix import aggregate_over_seeds, combinations, t_interval, variant_id, with_path
from memeval.plugins import build_registry, make_plugin_manager
from memeval.results import EvaluationResult, Metric
from memeval.selection import compile_expression
from memeval.suite import SuiteErrors, load_suite


def test_combinations_vary_the_last_key_fastest():
    cells = combinations({"seed": [0, 1], "noise.rate": [0.2, 0.4]})
    assert cells == [{"seed": 0, "noise.rate": 0.2}, {"seed": 0, "noise.rate": 0.4},
                     {"seed": 1, "noise.rate": 0.2}, {"seed": 1, "noise.rate": 0.4}]
    assert combinations({}) == [{}]
    assert variant_id("crosssplit", cells[3]) == "crosssplit[seed=1,noise.rate=0.4]"
    assert variant_id("plain", {}) == "plain"


def test_with_path_sets_nested_keys_without_touching_the_original():
    base = {"noise": {"kind": "symmetric", "rate": 0.1}, "epochs": 3}
    assert with_path(base, "noise.rate", 0.4) == {"noise": {"kind": "symmetric", "rate": 0.4}, "epochs": 3}
    assert base["noise"]["rate"] == 0.1
    assert with_path(base, "optimizer.lr", 0.1)["optimizer"] == {"lr": 0.1}
    with pytest.raises(ValueError, match="'epochs' is 3, not a mapping"):
        with_path(base, "epochs.n", 1)


def test_t_interval_equals_scipy():
    values = [0.81, 0.86, 0.79, 0.9]
    low, high = t_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert low == pytest.approx(ref[0], abs=1e-12) and high == pytest.approx(ref[1], abs=1e-12)
    assert t_interval([0.5]) == (None, None)


def _cell(seed: int, rate: float, value: float, status: str = "passed") -> EvaluationResult:
    return EvaluationResult(id=variant_id("std", {"seed": seed, "rate": rate}), method="m", model=None,
                            dataset=None, params={}, status=status, metrics=[Metric("acc", value, higher_is_worse=False)],
                            base_id="std", matrix={"seed": seed, "rate": rate})


def test_cells_that_differ_only_by_seed_are_aggregated():
    cells = [_cell(s, r, v) for (s, r, v) in [(0, 0.2, 0.9), (1, 0.2, 0.8), (2, 0.2, 0.85), (0, 0.4, 0.6),
                                                (1, 0.4, 0.7)]]
    cells.append(_cell(2, 0.4, math.nan))  # not computed: left out of the mean, n says so
    cells.append(_cell(3, 0.4, 0.0, status="error"))
    plain = EvaluationResult(id="other", method="m", model=None, dataset=None, params={},
                             metrics=[Metric("acc", 1.0)])
    groups = {g["id"]: g for g in aggregate_over_seeds([*cells, plain])}
    assert set(groups) == {"std[rate=0.2]", "std[rate=0.4]"}
    low = groups["std[rate=0.2]"]["metrics"][0]
    assert low["mean"] == pytest.approx(0.85) and low["n"] == 3 and low["higher_is_worse"] is False
    assert (low["ci_low"], low["ci_high"]) == pytest.approx(t_interval([0.9, 0.8, 0.85]))
    high = groups["std[rate=0.4]"]
    assert high["metrics"][0]["values"] == [0.6, 0.7] and high["errored"] == 1 and high["seeds"] == [0, 1, 2]


SUITE = """
memeval: 1
suite: grid
datasets:
  train: {loader: jsonl, path: data/train.jsonl, id_field: id}
models:
  tiny:
    adapter: recipe
    dataset: train
    architecture: {n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}
    training: {epochs: 2, batch_size: 8, learning_rate: 0.01}
    batch_size: 4
    matrix: {seed: [0, 1], training.epochs: [2, 3]}
evaluations:
  - id: loss
    method: lm.loss
    model: tiny
    dataset: train
    gates: [{metric: loss_mean, max: 100}]
  - id: cut
    method: lm.loss
    model: tiny
    dataset: train
    matrix: {params.max_tokens: [4, 8]}
report: {formats: [json, html, markdown]}
"""


@pytest.fixture
def grid_suite(tmp_path, cache_dir):
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    rows = [{"id": f"t{i}", "text": " ".join(words[(i * 3 + k) % 10] for k in range(4 + i % 7))} for i in range(30)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "grid.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def registry():
    return build_registry(make_plugin_manager())


def test_a_model_matrix_makes_one_model_and_one_item_per_cell(grid_suite, registry):
    suite = load_suite(grid_suite)
    items = collect(suite, registry)
    ids = [i.id for i in items]
    assert ids[:4] == ["loss[seed=0,training.epochs=2]", "loss[seed=0,training.epochs=3]",
                       "loss[seed=1,training.epochs=2]", "loss[seed=1,training.epochs=3]"]
    assert len(items) == 4 + 8  # the second evaluation crosses its own matrix with the model's
    assert "cut[seed=1,training.epochs=3,params.max_tokens=8]" in ids
    cell = items[3]
    assert cell.spec.model == "tiny[seed=1,training.epochs=3]" and cell.base_id == "loss" and cell.seed == 1
    assert suite.spec.models[cell.spec.model].params["training"]["epochs"] == 3
    assert suite.model_seeds[cell.spec.model] == 1  # recipes take the seed they are built with
    cut = next(i for i in items if i.id == "cut[seed=0,training.epochs=2,params.max_tokens=4]")
    assert cut.params.max_tokens == 4
    chosen = [i.id for i in items if compile_expression("loss and not cut and seed=1")(i.keywords)]
    assert chosen == ["loss[seed=1,training.epochs=2]", "loss[seed=1,training.epochs=3]"]


@pytest.mark.parametrize(("edit", "message"), [
    ("matrix: {params.max_tokens: [4, 8]}", None),
    ("matrix: {max_tokens: [4, 8]}", "did you mean 'params.max_tokens'"),
    ("matrix: {seed: [0, 1]}", "seed is set by both this matrix and model 'tiny'"),
    ("matrix: {params.max_tokens: []}", "non-empty list"),
    ("matrix: {params.max_tokens: [4, 4]}", "repeats a value"),
    ("matrix: {params.max_tokens: [4, 1]}", "max_tokens"),  # 1 is below the param's minimum of 2
])
def test_matrix_mistakes_are_suite_errors_with_a_line(grid_suite, registry, edit, message):
    grid_suite.write_text(SUITE.replace("matrix: {params.max_tokens: [4, 8]}", edit))
    if message is None:
        collect(load_suite(grid_suite), registry)
        return
    with pytest.raises(SuiteErrors) as caught:
        collect(load_suite(grid_suite), registry)
    text = str(caught.value)
    assert message in text and f"{grid_suite}:" in text


def test_a_grid_runs_aggregates_over_seeds_and_reuses_trained_models(grid_suite, run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("run", grid_suite, "--out", out, "-k", "not cut")
    assert code == 0, stdout + stderr
    run = json.loads((out / "run.json").read_text())
    assert [e["id"] for e in run["evaluations"]] == ["loss[seed=0,training.epochs=2]", "loss[seed=0,training.epochs=3]",
                                                     "loss[seed=1,training.epochs=2]", "loss[seed=1,training.epochs=3]"]
    assert all((out / e["records_path"]).is_file() for e in run["evaluations"])
    values = {e["id"]: e["metrics"][0]["value"] for e in run["evaluations"]}
    assert len(set(values.values())) == 4  # each seed and epoch count trained its own model
    group = next(a for a in run["aggregates"] if a["id"] == "loss[training.epochs=3]")
    loss = next(m for m in group["metrics"] if m["name"] == "loss_mean")
    expected = [values["loss[seed=0,training.epochs=3]"], values["loss[seed=1,training.epochs=3]"]]
    assert loss["mean"] == pytest.approx(np.mean(expected)) and loss["n"] == 2
    assert (loss["ci_low"], loss["ci_high"]) == pytest.approx(t_interval(expected))
    page = (out / "report.html").read_text()
    assert 'id="across-seeds"' in page and "loss_mean against training.epochs" in page
    assert "loss[training.epochs=3]" in (out / "summary.md").read_text().replace("\\", "")
    code, stdout, stderr = run_cli("run", grid_suite, "--out", tmp_path / "again", "-k", "not cut")
    assert code == 0 and "training recipe model" not in stderr  # every cell's model comes from the cache
