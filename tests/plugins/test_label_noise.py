"""label_noise.memorization end to end: a matrix of classifiers trained under label noise, its
metrics checked against predictions recomputed from the stored networks, its records, curves,
aggregates over seeds and report, and the cache (a second run trains nothing)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from scipy import stats

from memeval.train.classifier import TrainedClassifier
from memeval.train.sources import DigitsSource, load_source

SUITE = """
memeval: 1
suite: noise-mini
models:
  standard: &classifier
    adapter: classifier
    source: {kind: digits, train_limit: 400}
    architecture: {kind: mlp, hidden: [128]}
    noise: {kind: symmetric, rate: 0.3}
    trainer: standard
    optimizer: {name: adam, lr: 0.02, epochs: 150}
    matrix: {seed: [0, 1]}
  crosssplit: {<<: *classifier, trainer: crosssplit, trainer_params: {crosssplit: {warmup_epochs: 5}}}
evaluations:
  - id: standard
    method: label_noise.memorization
    model: standard
    gates: [{metric: memorization_rate, min: 0.5}]
  - id: crosssplit
    method: label_noise.memorization
    model: crosssplit
report: {formats: [json, html, markdown]}
"""


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("label-noise")
    suite = root / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    cache = root / "cache"
    code = main(["run", str(suite), "--out", str(root / "run"), "--cache-dir", str(cache), "-q"])
    return root, code


def _records(run_dir, evaluation):
    return [json.loads(line) for line in (run_dir / evaluation["records_path"]).open()]


def test_metrics_equal_predictions_recomputed_from_the_stored_networks(noise_run):
    root, code = noise_run
    assert code == 0
    run = json.loads((root / "run" / "run.json").read_text())
    assert [e["id"] for e in run["evaluations"]] == ["standard[seed=0]", "standard[seed=1]", "crosssplit[seed=0]",
                                                     "crosssplit[seed=1]"]
    data = load_source(DigitsSource(train_limit=400))
    for evaluation in run["evaluations"]:
        model_dir = next(p for p in (root / "cache" / "classifiers").iterdir()
                         if p.name == run["models"][evaluation["model"]]["recipe"])
        trained = TrainedClassifier(model_dir)
        with torch.no_grad():
            logits = sum(net(torch.tensor(data.x_train, dtype=torch.float32))
                         for name, net in trained.networks.items() if name in trained.predict_with)
            test_logits = sum(net(torch.tensor(data.x_test, dtype=torch.float32))
                              for name, net in trained.networks.items() if name in trained.predict_with)
        pred, test_pred = logits.argmax(1).numpy(), test_logits.argmax(1).numpy()
        labels = trained.labels
        assert np.array_equal(labels.clean, data.y_train)  # the clean labels are the source's
        metrics = {m["name"]: m for m in evaluation["metrics"]}
        noisy = labels.mask
        expected = {"memorization_rate": (pred[noisy] == labels.noisy[noisy]).mean(),
                    "clean_train_fit": (pred[~noisy] == labels.clean[~noisy]).mean(),
                    "clean_test_accuracy": (test_pred == data.y_test).mean(),
                    "noise_rate": noisy.mean()}
        for name, value in expected.items():
            assert metrics[name]["value"] == pytest.approx(value, abs=1e-12), (evaluation["id"], name)
        rate = metrics["memorization_rate"]  # an exact binomial CI, as scipy computes it
        ci = stats.binomtest(int(round(rate["value"] * noisy.sum())), int(noisy.sum())).proportion_ci(0.95, "exact")
        assert (rate["ci_low"], rate["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert noisy.sum() == round(0.3 * 400)  # exactly the requested rate
        records = _records(root / "run", evaluation)
        assert len(records) == 400 and [r["final_prediction"] for r in records] == pred.tolist()
        assert all(r["first_epoch_noisy_label"] is None or 1 <= r["first_epoch_noisy_label"] <= 150 for r in records)
        curves = evaluation["artifacts"]["curves"]
        assert len(curves["memorization_rate"]) == 150 == len(curves["clean_test_accuracy"])
        if evaluation["id"].startswith("crosssplit"):
            assert "label_correction_accuracy" in metrics and "label_correction_accuracy" in curves


def test_crosssplit_memorizes_less_than_standard_training(noise_run):
    root, _ = noise_run
    run = json.loads((root / "run" / "run.json").read_text())
    groups = {a["id"]: {m["name"]: m for m in a["metrics"]} for a in run["aggregates"]}
    assert set(groups) == {"standard", "crosssplit"}  # the cells differ only by seed
    assert groups["crosssplit"]["memorization_rate"]["mean"] < groups["standard"]["memorization_rate"]["mean"] / 2
    assert groups["standard"]["memorization_rate"]["n"] == 2


def test_report_draws_the_training_curves(noise_run):
    root, _ = noise_run
    page = (root / "run" / "report.html").read_text()
    assert 'data-plugin-section="Label noise"' in page
    assert "Over training: fit, memorization of noisy labels, test accuracy" in page
    assert 'id="across-seeds"' in page


def test_a_second_run_trains_nothing(noise_run, capsys):
    from memeval.cli import main

    root, _ = noise_run
    capsys.readouterr()
    code = main(["run", str(root / "suite.yaml"), "--out", str(root / "again"), "--cache-dir", str(root / "cache")])
    err = capsys.readouterr().err
    assert code == 0 and "training classifier" not in err
    first = json.loads((root / "run" / "run.json").read_text())
    again = json.loads((root / "again" / "run.json").read_text())
    assert [e["metrics"] for e in first["evaluations"]] == [e["metrics"] for e in again["evaluations"]]
