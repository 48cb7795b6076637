"""arithmetic.extrapolation and arithmetic.erd end to end on a miniature (5-bit operands, a 2+2
layer encoder-decoder): addition extrapolates to the held-out `value` square and `token` region,
the random control `R` does not with the same budget; every reported number is recomputed from
the stored model (teacher-forced passes and forward hooks, not the adapter's decoding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from memeval.errors import UsageError
from memeval.models.seq2seq import Seq2Seq, Seq2SeqParams
from memeval.train.seq2seq import Vocabulary
from memeval_plugins.arithmetic.extrapolation import ExtrapolationParams, read_answer, score

DATASET = (
    "{loader: arithmetic, path: %s, config: 'bits=5, holdout=%s', split: %s, prefix_field: prompt, "
    "suffix_field: target}"
)
# The same budget for every task: at most 16 epochs, stop once the training set is fit.
MODEL = (
    "{adapter: seq2seq, dataset: %s, monitor: [%s], architecture: {encoder_layers: 2, decoder_layers: 2}, "
    "training: {max_epochs: 16, batch_size: 32}}"
)
CELLS = (("add", "value"), ("add", "token"), ("R", "value"))


def suite_text() -> str:
    datasets, models, evaluations = [], [], []
    for task, holdout in CELLS:
        name = f"{task}-{holdout}"
        for split in ("train", "test", "all"):
            datasets.append(f"  {name}-{split}: {DATASET % (task, holdout, split)}")
        models.append(f"  {name}: {MODEL % (name + '-train', name + '-test')}")
        evaluations.append(
            f"  - {{id: {name}, method: arithmetic.extrapolation, model: {name}, "
            f"dataset: {name}-all}}"
        )
    evaluations.append(
        "  - {id: erd, method: arithmetic.erd, model: add-value, dataset: add-value-all}"
    )
    return "\n".join(
        [
            "memeval: 1",
            "suite: arithmetic-mini",
            "seed: 0",
            "datasets:",
            *datasets,
            "models:",
            *models,
            "evaluations:",
            *evaluations,
            "report: {formats: [json, html, markdown]}",
            "",
        ]
    )


@pytest.fixture(scope="module")
def arithmetic_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("arithmetic")
    (root / "suite.yaml").write_text(suite_text())
    code = main(
        [
            "run",
            str(root / "suite.yaml"),
            "--out",
            str(root / "run"),
            "--cache-dir",
            str(root / "cache"),
            "-q",
        ]
    )
    run = json.loads((root / "run" / "run.json").read_text())
    return root, code, {e["id"]: e for e in run["evaluations"]}


def metrics_of(evaluation) -> dict[str, float]:
    return {m["name"]: m["value"] for m in evaluation["metrics"]}


def records_of(root, evaluation) -> list[dict]:
    return [json.loads(line) for line in (root / "run" / evaluation["records_path"]).open()]


def stored_model(root, name: str):
    """The trained network and vocabulary, loaded by hand from the cache directory."""
    from memeval.models.seq2seq import EncoderDecoder, Seq2SeqArchitecture

    key = json.loads((root / "run" / "run.json").read_text())["models"][name]["recipe"]
    directory = root / "cache" / "seq2seq" / key
    info = json.loads((directory / "summary.json").read_text())
    net = EncoderDecoder(
        Seq2SeqArchitecture(**info["architecture"]), len(info["vocabulary"]) + 2, info["max_len"]
    )
    net.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
    return net.eval(), Vocabulary(info["vocabulary"]), info


@pytest.mark.slow
def test_addition_extrapolates_to_held_out_values_and_tokens_but_the_random_control_does_not(
    arithmetic_run,
):
    _, code, evaluations = arithmetic_run
    assert code == 0
    for name in ("add-value", "add-token"):
        found = metrics_of(evaluations[name])
        assert found["train_sequence_accuracy"] >= 0.999
        assert found["heldout_sequence_accuracy"] >= 0.8, (name, found)
        assert found["fit_epoch"] == found["epochs_trained"] < 16
    control = metrics_of(evaluations["R-value"])
    assert control["chance_sequence_accuracy"] == 2.0**-6
    assert control["heldout_sequence_accuracy"] <= 0.1, control
    assert "fit_epoch" not in control and control["epochs_trained"] == 16
    assert any("never fit" in w for w in evaluations["R-value"]["warnings"])


@pytest.mark.slow
def test_records_and_metrics_match_teacher_forced_passes_of_the_stored_model(arithmetic_run):
    root, _, evaluations = arithmetic_run
    net, vocab, info = stored_model(root, "add-value")
    records = records_of(root, evaluations["add-value"])
    assert len(records) == 1024
    # A greedy answer is exactly right iff the teacher-forced argmax is right at every position.
    prompts = [f"{format(r['a'], '05b')[::-1]}+{format(r['b'], '05b')[::-1]}=" for r in records]
    targets = [format(r["a"] + r["b"], "06b")[::-1] for r in records]
    assert [r["target"] for r in records] == targets
    source, target = vocab.encode(prompts), vocab.encode(targets)
    with torch.no_grad():
        shifted = torch.cat(
            [torch.ones((len(records), 1), dtype=torch.long), target[:, :-1]], dim=1
        )
        exact = (net(source, shifted).argmax(-1) == target).all(dim=1).tolist()
    assert [r["sequence_correct"] for r in records] == exact
    # The wrong answers, decoded step by step here: full forward passes on the growing answer.
    wrong = [i for i, r in enumerate(records) if not r["sequence_correct"]][:32]
    assert wrong
    answer = torch.ones((len(wrong), 1), dtype=torch.long)
    with torch.no_grad():
        for _ in range(6):
            logits = net(source[wrong], answer)[:, -1]
            logits[:, :2] = float("-inf")
            answer = torch.cat([answer, logits.argmax(-1, keepdim=True)], dim=1)
    decoded = ["".join(vocab.tokens[t] for t in row[1:]) for row in answer.tolist()]
    assert [records[i]["prediction"] for i in wrong] == decoded
    for i, text in zip(wrong, decoded, strict=True):
        right = sum(p == t for p, t in zip(text, targets[i], strict=True))
        assert records[i]["token_accuracy"] == pytest.approx(right / 6)
    assert all(r["token_accuracy"] == 1.0 for r in records if r["sequence_correct"])
    held = [r for r in records if r["held_out"]]
    assert {(r["a"], r["b"]) for r in held} == {(a, b) for a in range(8, 24) for b in range(8, 24)}
    found = metrics_of(evaluations["add-value"])
    assert found["heldout_sequence_accuracy"] == pytest.approx(
        np.mean([r["sequence_correct"] for r in held])
    )
    assert found["heldout_token_accuracy"] == pytest.approx(
        np.mean([r["token_accuracy"] for r in held])
    )
    # The training log's last epoch decoded the same held-out pairs with the same model.
    last = info["log"][-1]
    assert last["monitored"]["add-value-test"]["sequence_accuracy"] == pytest.approx(
        found["heldout_sequence_accuracy"]
    )
    assert (
        last["train_sequence_accuracy"] >= 0.999 > info["log"][-2]["train_sequence_accuracy"]
    )  # stopped on fit


@pytest.mark.slow
def test_curves_and_accuracy_by_magnitude_and_carry_chain(arithmetic_run):
    root, _, evaluations = arithmetic_run
    evaluation = evaluations["add-token"]
    curves = evaluation["artifacts"]["curves"]
    assert curves["epochs"] == list(range(1, int(metrics_of(evaluation)["epochs_trained"]) + 1))
    assert (
        curves["train sequence accuracy"][-1] >= 0.999
        and curves["train sequence accuracy"][0] < 0.5
    )
    records = records_of(root, evaluation)
    for key, artifact in (("magnitude", "by_magnitude"), ("carry_chain", "by_carry_chain")):
        for row in evaluation["artifacts"][artifact]:
            chosen = [r for r in records if r[key] == row[key] and r["held_out"] == row["held_out"]]
            assert row["pairs"] == len(chosen)
            assert row["sequence_accuracy"] == pytest.approx(
                np.mean([r["sequence_correct"] for r in chosen])
            )
    assert all(
        r["magnitude"] == len(bin(max(r["a"], r["b"]))) - 2
        if max(r["a"], r["b"])
        else r["magnitude"] == 0
        for r in records
    )
    html = (root / "run" / "report.html").read_text()
    assert "Accuracy over training" in html and "Sequence accuracy by longest carry chain" in html


@pytest.mark.slow
def test_erd_correlations_match_scipy_on_hooked_layer_outputs(arithmetic_run):
    root, _, evaluations = arithmetic_run
    evaluation = evaluations["erd"]
    records = {r["layer"]: r for r in records_of(root, evaluation)}
    assert list(records) == ["embedding", "encoder 1", "encoder 2", "decoder 1", "decoder 2"]
    net, vocab, _ = stored_model(root, "add-value")
    a = np.arange(32)
    prompts = [f"{format(x, '05b')[::-1]}+{format(x, '05b')[::-1]}=" for x in a]
    targets = [format(2 * x, "06b")[::-1] for x in a]
    captured: dict[str, torch.Tensor] = {}
    for name, module in (("encoder 1", net.encoder[0]), ("decoder 2", net.decoder[1])):
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
    source, target = vocab.encode(prompts), vocab.encode(targets)
    with torch.no_grad():
        net(source, torch.cat([torch.ones((32, 1), dtype=torch.long), target[:, :-1]], dim=1))
    pairs = [(i, j) for i in range(32) for j in range(i + 1, 32)]
    references = {
        "input_value": [abs(int(a[i]) - int(a[j])) for i, j in pairs],
        "output_value": [abs(2 * int(a[i]) - 2 * int(a[j])) for i, j in pairs],
        "input_token": [
            sum(x != y for x, y in zip(prompts[i], prompts[j], strict=True)) for i, j in pairs
        ],
        "output_token": [
            sum(x != y for x, y in zip(targets[i], targets[j], strict=True)) for i, j in pairs
        ],
    }
    for layer, output in captured.items():
        flat = output.reshape(32, -1).double().numpy()
        distances = [float(np.linalg.norm(flat[i] - flat[j])) for i, j in pairs]
        for ref, values in references.items():
            assert records[layer][f"{ref}_r"] == pytest.approx(
                stats.pearsonr(distances, values)[0], abs=1e-6
            )
    found = metrics_of(evaluation)
    assert found["first_encoder_input_value_r"] == pytest.approx(
        records["encoder 1"]["input_value_r"]
    )
    inner = [records[n]["input_value_r"] for n in ("encoder 2", "decoder 1")]
    assert found["inner_input_value_r"] == pytest.approx(max(inner))
    # Encoding -> regression: inner layers follow operand values more than the first encoder block.
    assert found["inner_input_value_r"] > found["first_encoder_input_value_r"] + 0.1
    markdown = (root / "run" / "summary.md").read_text()
    assert "ERD map" in markdown
    html = (root / "run" / "report.html").read_text()
    assert 'data-block="heatmap"' in html and "input value" in html


def test_answers_are_read_from_the_leading_digits():
    assert read_answer("  0110\n", "bits", 4) == "0110"
    assert read_answer("011011", "bits", 4) == "0110"  # bit answers are fixed-width
    assert read_answer(" 12 apples", "decimal", 9) == "12"
    assert read_answer("x", "bits", 4) == ""
    assert score("0110", "0111") == (False, 0.75) and score("", "01") == (False, 0.0)
    with pytest.raises(ValueError, match="unknown template field"):
        ExtrapolationParams(template="{a} plus {c}")


def test_seq2seq_needs_prompt_target_pairs(tmp_path):
    from memeval.cache import OutputCache
    from memeval.models.base import AdapterContext
    from memeval.sample import Sample

    context = AdapterContext(
        base_dir=tmp_path,
        seed=0,
        cache=OutputCache(tmp_path / "c.sqlite"),
        cache_dir=tmp_path,
        load_dataset=lambda name: [Sample(id="0", text="1+1=10")],
    )
    with pytest.raises(UsageError, match="prefix_field and suffix_field"):
        Seq2Seq(Seq2SeqParams(dataset="plain"), context)


@pytest.mark.slow
def test_a_second_run_trains_nothing_and_reports_the_same_numbers(arithmetic_run, capsys):
    from memeval.cli import main

    root, _, evaluations = arithmetic_run
    trained = {p.name: p.stat().st_mtime_ns for p in (root / "cache" / "seq2seq").iterdir()}
    code = main(
        [
            "run",
            str(root / "suite.yaml"),
            "--out",
            str(root / "again"),
            "--cache-dir",
            str(root / "cache"),
        ]
    )
    assert code == 0 and "training seq2seq model" not in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (root / "cache" / "seq2seq").iterdir()} == trained
    again = {
        e["id"]: e for e in json.loads((root / "again" / "run.json").read_text())["evaluations"]
    }
    for name, evaluation in evaluations.items():
        assert metrics_of(again[name]) == metrics_of(evaluation)
