"""mbi: the RAM, lookup tables with counted compute-free inference, the energy model, and the
`mbi.lookup` / `mbi.search` methods end to end on digits. Operation counts, MACs and energies are
checked against hand counts; lookup inference against a per-example reference loop; the metrics
against recomputation from the stored networks."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from memeval.api import OptimizerParams, TorchThreads, TrainData, TrainJob, UsageError
from memeval.train.architectures import MLP
from memeval.train.sources import load_digits
from memeval_plugins.mbi.baselines import resnet
from memeval_plugins.mbi.energy import EnergyParams, compute_energy_pj, count_macs, lookup_energy_pj
from memeval_plugins.mbi.lookup import _ram
from memeval_plugins.mbi.ram import RamTrainer, RecurrentAttention, ram, trajectory
from memeval_plugins.mbi.ram import read_patches as torch_patches
from memeval_plugins.mbi.search import SearchParams, pareto
from memeval_plugins.mbi.tables import (
    LookupTables,
    OpCounts,
    binary_codes,
    build_tables,
    lookup_inference,
    read_patches,
)

# ---------------------------------------------------------------- a hand-made table


def hand_tables() -> LookupTables:
    """Glimpse 2 (4-bit keys), 3 keys, 2 glimpses; state 0 looks at (0, 0) next, state 1 at (2, 2)."""
    codes = np.array([0b0000, 0b1111, 0b0011], np.uint64)
    locations = [np.array([[0, 0], [2, 2]])]
    transitions = [np.array([[0, 1, 1]]), np.array([[3, 4, 5], [6, 7, 8]])]
    return LookupTables(2, (1, 1), codes, locations, transitions)


def test_lookup_inference_follows_the_tables_and_counts_every_operation():
    images = np.stack([np.zeros((1, 4, 4)), np.ones((1, 4, 4))]).astype(np.float32)
    pred, counts = lookup_inference(hand_tables(), images)
    # zeros: key 0 -> state 0 -> glimpse at (0, 0) reads zeros -> key 0 -> class 3;
    # ones: key 0b1111 -> state 1 -> glimpse at (2, 2) reads ones -> key 1 -> class 7
    assert pred.tolist() == [3, 7]
    # per example: 2 glimpses x 3 keys; 2 rows read per glimpse; 1 location read; 2 transition reads
    assert (counts.key_comparisons, counts.bits_compared) == (12, 48)
    assert (counts.patch_reads, counts.location_reads, counts.transition_reads) == (8, 2, 4)
    assert counts.per_inference() == {
        "key_comparisons": 6,
        "bits_compared": 24,
        "table_reads": 7,
        "patch_reads": 4,
        "location_reads": 1,
        "transition_reads": 2,
        "lookups": 13,
    }
    tables = hand_tables()
    assert tables.entries == 3 + 2 + 3 + 6
    assert tables.bytes == 3 * 1 + 2 * 2 + 9 * 1


def test_patch_reads_and_codes_match_torch_and_python():
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 8, 8)).astype(np.float32)
    pixels = np.array([[0, 0], [7, 7], [3, 4], [0, 7], [5, 1]])
    ours = read_patches(images, pixels, 3)
    theirs = torch_patches(torch.tensor(images[:, 0]), torch.tensor(pixels), 3).flatten(1).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours[0].reshape(3, 3)[0].tolist() == [0, 0, 0]  # above the image: zero padding
    np.testing.assert_array_equal(ours[2].reshape(3, 3), images[2, 0, 2:5, 3:6])
    codes = binary_codes(ours, 0.5)
    assert [int(c) for c in codes] == [
        sum(1 << i for i, v in enumerate(row) if v > 0.5) for row in ours
    ]


# ---------------------------------------------------------------- energy and MACs


def test_energy_arithmetic_equals_a_hand_calculation():
    counts = OpCounts(
        examples=2,
        key_comparisons=12,
        bits_compared=48,
        patch_reads=8,
        location_reads=2,
        transition_reads=4,
    )
    energy = EnergyParams(
        cam_search_fj_per_bit=2.0,
        sram_read_pj=10.0,
        digital_mac_pj=4.0,
        digital_int8_mac_pj=0.5,
        cim_mac_fj=6.0,
    )
    # per inference: 24 bits x 2 fJ = 0.048 pJ, 7 reads x 10 pJ = 70 pJ
    assert lookup_energy_pj(counts, energy) == pytest.approx(70.048)
    assert compute_energy_pj(1000, energy) == pytest.approx(
        {"cim": 6.0, "digital_fp32": 4000.0, "digital_int8": 500.0}
    )
    defaults = EnergyParams()
    assert defaults.cim_mac_fj == pytest.approx(2 / 351e12 * 1e15)  # 351 TOPS/W, 2 ops per MAC
    assert (defaults.cam_search_fj_per_bit, defaults.sram_read_pj, defaults.digital_mac_pj) == (
        2.89,
        10.0,
        4.6,
    )


def _flop_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 2


def test_macs_equal_hand_counts():
    x = torch.zeros(1, 1, 8, 8)
    mlp = MLP((1, 8, 8), 10, [5, 7])
    assert count_macs(mlp, x) == 64 * 5 + 5 * 7 + 7 * 10
    net = resnet((1, 8, 8), 10, blocks=1, width=2)
    # stem 8x8x2 x 9; stage 1: two 8x8x2 x 2x9 convs; stage 2: 4x4x4 x 2x9, 4x4x4 x 4x9, 1x1 shortcut
    # 4x4x4 x 2; stage 3: 2x2x8 x 4x9, 2x2x8 x 8x9, shortcut 2x2x8 x 4; head 8 x 10
    hand = 1152 + 2 * 2304 + 1152 + 2304 + 128 + 1152 + 2304 + 128 + 80
    assert count_macs(net, x) == hand
    T, g, P, L, G, D = 3, 2, 5, 3, 6, 4
    model = RecurrentAttention(
        (1, 8, 8),
        10,
        glimpse=g,
        glimpses=T,
        patch_hidden=P,
        location_hidden=L,
        glimpse_hidden=G,
        hidden=D,
    )
    # per glimpse: patch, location, what, where, core (h and g); a location after every glimpse but
    # the last; the classifier once; the baseline is for training only
    per_glimpse = g * g * P + 2 * L + P * G + L * G + D * D + G * D
    assert count_macs(model, torch.rand(2, 1, 8, 8)) == T * per_glimpse + (T - 1) * D * 2 + D * 10


@pytest.mark.slow  # importing torch's flop counter takes about 6 s
def test_macs_equal_torchs_flop_counter():
    x = torch.rand(1, 1, 16, 16)
    models = (
        resnet((1, 16, 16), 10, width=4),
        ram((1, 16, 16), 10, glimpse=4, glimpses=3),
        MLP((1, 16, 16), 10, [32]),
    )
    for model in models:
        assert count_macs(model, x) == _flop_macs(model, x)


# ---------------------------------------------------------------- a RAM trained on digits


@pytest.fixture(scope="module")
def trained_ram():
    digits = load_digits()
    data = TrainData(
        torch.tensor(digits.x_train), torch.tensor(digits.y_train), torch.tensor(digits.x_test), 10
    )
    job = TrainJob(
        lambda: ram(digits.input_shape, 10, glimpse=4, glimpses=4),
        data,
        OptimizerParams(lr=3e-3, epochs=30, batch_size=64),
        0,
    )
    with TorchThreads(1):
        result = RamTrainer().train(job)
    return result.networks["net"], digits


def _reference_inference(tables: LookupTables, images: np.ndarray) -> list[int]:
    """One example at a time, thermometer keys built and compared bit by bit in Python."""
    out = []
    for image in images:
        state = 0
        for t, transition in enumerate(tables.transitions):
            centre = tables.start if t == 0 else tuple(tables.locations[t - 1][state])
            patch = read_patches(image[None], np.array([centre]), tables.glimpse)[0]
            bits = [
                v > (level + 1) / (tables.levels + 1)
                for level in range(tables.levels)
                for v in patch
            ]
            query = sum(1 << i for i, bit in enumerate(bits) if bit)
            distances = [bin(query ^ int(code)).count("1") for code in tables.codes]
            state = int(transition[state, distances.index(min(distances))])
        out.append(state)
    return out


@pytest.mark.slow
def test_mbi_approaches_the_ram_and_grows_with_table_size(trained_ram):
    net, digits = trained_ram
    ram_pred = trajectory(net, digits.x_test).predicted
    assert np.array_equal(ram_pred, net(torch.tensor(digits.x_test)).argmax(1).numpy())
    ram_accuracy = (ram_pred == digits.y_test).mean()
    assert ram_accuracy > 0.7
    accuracy, size = [], []
    for k in (4, 16, 128):
        tables = build_tables(net, digits.x_train, k, k, seed=0, levels=4)
        pred, counts = lookup_inference(tables, digits.x_test)
        accuracy.append((pred == digits.y_test).mean())
        size.append(tables.bytes)
        assert counts.per_inference()["key_comparisons"] == 4 * len(tables.codes)
        assert counts.per_inference()["bits_compared"] == 4 * len(tables.codes) * 64
    assert size[0] < size[1] < size[2]
    assert accuracy[0] + 0.1 < accuracy[1] < accuracy[2]
    # the stated margin: on digits the largest table is within 0.15 of the RAM it memorizes
    assert accuracy[2] >= ram_accuracy - 0.15
    assert pred.tolist()[:60] == _reference_inference(tables, digits.x_test[:60])


# ---------------------------------------------------------------- the methods end to end

SUITE = """
memeval: 1
suite: mbi-mini
seed: 0
models:
  ram:
    adapter: classifier
    source: {kind: digits}
    architecture: {kind: factory, factory: "memeval_plugins.mbi.ram:ram", kwargs: {glimpse: 4, glimpses: 3, hidden: 64}}
    trainer: ram
    optimizer: {name: adam, lr: 0.003, epochs: 12, batch_size: 64}
  mlp:
    adapter: classifier
    source: {kind: digits}
    architecture: {kind: mlp, hidden: [32]}
    optimizer: {name: adam, lr: 0.01, epochs: 30}
  cnn:
    adapter: classifier
    source: {kind: digits, train_limit: 300}
    architecture: {kind: factory, factory: "memeval_plugins.mbi.baselines:resnet", kwargs: {blocks: 1, width: 4}}
    optimizer: {name: adam, lr: 0.01, epochs: 2, batch_size: 100}
evaluations:
  - id: lookup
    method: mbi.lookup
    model: ram
    params: {clusters: {hidden: 16, patches: 16}, sweep: [{hidden: 4, patches: 4}], mlp: mlp, cnn: cnn,
             energy: {sram_read_pj: 5.0}}
  - id: search
    method: mbi.search
    model: ram
    params: {trials: 3, glimpse: [3, 4], glimpses: [2, 3], hidden_clusters: [4, 16], patch_clusters: [4, 16],
             epochs: 3, train_limit: 700}
report: {formats: [json, html]}
"""


@pytest.fixture(scope="module")
def mbi_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("mbi")
    suite = root / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    code = main(
        ["run", str(suite), "--out", str(root / "run"), "--cache-dir", str(root / "cache"), "-q"]
    )
    return root, code


def _evaluation(root, name):
    run = json.loads((root / "run" / "run.json").read_text())
    evaluation = next(e for e in run["evaluations"] if e["id"] == name)
    records = [json.loads(line) for line in (root / "run" / evaluation["records_path"]).open()]
    return evaluation, {m["name"]: m["value"] for m in evaluation["metrics"]}, records


@pytest.mark.slow
def test_lookup_metrics_equal_recomputation_from_the_stored_networks(mbi_run):
    from memeval.train.classifier import TrainedClassifier

    root, code = mbi_run
    assert code == 0
    evaluation, metrics, records = _evaluation(root, "lookup")
    directories = sorted((root / "cache" / "classifiers").glob("*/summary.json"))
    models = {}
    for summary in directories:
        model = TrainedClassifier(summary.parent)
        kind = json.loads(summary.read_text())["params"]["architecture"]
        models[
            "ram"
            if "ram:ram" in str(kind.get("factory"))
            else "cnn"
            if kind["kind"] == "factory"
            else "mlp"
        ] = model
    net, data = _ram(models["ram"]), models["ram"].data()
    tables = build_tables(net, data.x_train, 16, 16, seed=0)
    pred, counts = lookup_inference(tables, data.x_test)
    assert metrics["mbi_accuracy"] == pytest.approx((pred == data.y_test).mean())
    train_pred, _ = lookup_inference(tables, data.x_train)
    assert metrics["mbi_train_accuracy"] == pytest.approx((train_pred == data.y_train).mean())
    assert metrics["ram_accuracy"] == pytest.approx(
        (models["ram"].predict(data.x_test) == data.y_test).mean()
    )
    assert metrics["table_bytes"] == tables.bytes and metrics["table_entries"] == tables.entries
    per = counts.per_inference()
    assert metrics["lookups_per_inference"] == per["key_comparisons"] + per["table_reads"]
    # 3 glimpses: 3 x keys comparisons of 16 bits, 4 rows + 1 transition per glimpse, 2 location reads
    assert per["key_comparisons"] == 3 * len(tables.codes) and per["table_reads"] == 3 * 4 + 3 + 2
    assert metrics["energy_mbi_pj"] == pytest.approx(
        3 * len(tables.codes) * 16 * 2.89e-3 + 17 * 5.0
    )
    macs = {
        "ram": 3 * (16 * 64 + 2 * 16 + 64 * 128 + 16 * 128 + 64 * 64 + 128 * 64)
        + 2 * 64 * 2
        + 64 * 10,
        "mlp": 64 * 32 + 32 * 10,
    }
    for name in ("ram", "mlp"):
        assert metrics[f"macs_{name}"] == macs[name]
        assert metrics[f"energy_{name}_cim_pj"] == pytest.approx(macs[name] * 2 / 351e12 * 1e12)
    assert metrics["macs_cnn"] == count_macs(models["cnn"].networks["net"], torch.zeros(1, 1, 8, 8))
    assert metrics["cnn_cim_over_mbi"] == pytest.approx(
        metrics["energy_cnn_cim_pj"] / metrics["energy_mbi_pj"]
    )
    assert metrics["accuracy_gap"] == pytest.approx(
        metrics["ram_accuracy"] - metrics["mbi_accuracy"]
    )
    assert {r["name"] for r in records} == {"16x16", "4x4", "ram", "mlp", "cnn"}
    assert evaluation["artifacts"]["energy_constants"]["sram_read_pj"] == 5.0
    html = (root / "run" / "report.html").read_text()
    assert (
        "Accuracy against table size" in html
        and "Energy constants" in html
        and "suite override" in html
    )


@pytest.mark.slow
def test_search_trials_become_records_and_the_best_is_reported(mbi_run):
    root, _ = mbi_run
    evaluation, metrics, records = _evaluation(root, "search")
    assert [r["trial"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["objective"] == pytest.approx(r["val_accuracy"] - 0.02 * math.log2(r["bytes"]))
        assert (
            2 <= r["glimpses"] <= 3 and r["glimpse"] in (3, 4) and 4 <= r["hidden_clusters"] <= 16
        )
    best = max(records, key=lambda r: r["objective"])
    assert metrics["best_objective"] == pytest.approx(best["objective"])
    assert metrics["best_table_bytes"] == best["bytes"]
    assert metrics["pareto_trials"] == len(pareto(records)) >= 1


def test_pareto_front_and_bad_params():
    rows = [
        {"trial": 0, "val_accuracy": 0.5, "bytes": 100},
        {"trial": 1, "val_accuracy": 0.7, "bytes": 200},
        {"trial": 2, "val_accuracy": 0.6, "bytes": 300},
        {"trial": 3, "val_accuracy": 0.7, "bytes": 250},
    ]
    assert pareto(rows) == {0, 1}
    with pytest.raises(ValidationError, match="glimpses"):
        SearchParams(glimpses=(4, 2))
    with pytest.raises(ValidationError, match="glimpse sizes must be"):
        SearchParams(glimpse=[9])
    with pytest.raises(ValidationError, match="levels 4"):
        SearchParams(glimpse=[4, 5], levels=4)

    class NotRam:
        networks = {"net": MLP((1, 8, 8), 10, [4])}

    with pytest.raises(UsageError, match="RAM architecture"):
        _ram(NotRam())
