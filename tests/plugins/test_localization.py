"""localization pieces against independent computations: gradient shares against per-example
backward passes (and summing to one), rewinding against the checkpoint's tensors, neuron flipping
against zeroing the same neurons' weights directly, retraining touching only its layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memeval.api import UsageError
from memeval.threads import TorchThreads
from memeval.train.architectures import MLP, SmallCNN
from memeval_plugins.localization.gradient_accounting import gradient_shares
from memeval_plugins.localization.layer_rewinding import rewind, rewind_epoch
from memeval_plugins.localization.neuron_flipping import collateral_drop, greedy_flip
from memeval_plugins.localization.probe import ProbeData, layers
from memeval_plugins.localization.retraining import RetrainingParams, retrain_layer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one torch thread (as the methods do), and a shared machine stays usable."""
    with TorchThreads(1):
        yield

def _data(n: int = 40, shape: tuple[int, ...] = (6,), seed: int = 0) -> ProbeData:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[::5] = True
    clean = torch.where(noisy, (y + 1) % 3, y)
    return ProbeData(torch.randn(n, *shape, generator=gen), y, clean, noisy, torch.randn(10, *shape, generator=gen),
                     torch.randint(0, 3, (10,), generator=gen))


def test_gradient_shares_sum_to_one_and_match_per_example_gradients():
    torch.manual_seed(0)
    net, data = MLP((6,), 3, [8, 8]), _data()
    rows = gradient_shares(net, data)
    assert [r["layer"] for r in rows] == ["body.fc1", "body.fc2", "head"]
    sums = {group: {name: torch.zeros_like(p) for name, p in net.named_parameters()} for group in ("noisy", "clean")}
    for i in range(len(data.y)):  # independent: one backward pass per example, summed by group
        net.zero_grad()
        (F.cross_entropy(net(data.x[i:i + 1]), data.y[i:i + 1]) / len(data.y)).backward()
        for name, p in net.named_parameters():
            sums["noisy" if data.noisy[i] else "clean"][name] += p.grad
    for row in rows:
        norm = {g: float(torch.sqrt(sum(sums[g][f"{row['layer']}.{leaf}"].pow(2).sum() for leaf in ("weight", "bias"))))
                for g in sums}
        assert np.isclose(row["noisy_norm"], norm["noisy"], rtol=1e-4)
        assert np.isclose(row["clean_norm"], norm["clean"], rtol=1e-4)
        assert np.isclose(row["noisy_share"], norm["noisy"] / (norm["noisy"] + norm["clean"]), rtol=1e-4)
        assert row["noisy_share"] + row["clean_share"] == 1.0
        assert 0 < row["noisy_share"] < 1


def test_rewinding_restores_exactly_the_checkpointed_weights_of_one_layer():
    torch.manual_seed(0)
    early = SmallCNN((1, 8, 8), 4, [3, 5], 6)
    trained = copy.deepcopy(early)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    checkpoint = {k: v.clone() for k, v in early.state_dict().items()}
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    groups = layers(trained)
    assert list(groups) == ["body.conv1", "body.conv2", "body.fc", "head"]
    rewound = rewind(trained, checkpoint, groups["body.conv2"])
    for name, value in rewound.state_dict().items():
        source = checkpoint if name.startswith("body.conv2.") else before
        assert torch.equal(value, source[name]), name
    for name, value in trained.state_dict().items():  # the trained network itself is untouched
        assert torch.equal(value, before[name])


def test_rewind_epoch_defaults_near_a_fifth_of_training_and_rejects_missing_checkpoints():
    assert rewind_epoch(None, [0, 5, 10, 20, 30, 100], 100) == 20
    assert rewind_epoch(10, [0, 10, 20], 20) == 10
    try:
        rewind_epoch(7, [0, 10, 20], 20)
    except UsageError as exc:
        assert "epochs [0, 10, 20]" in str(exc)
    else:
        raise AssertionError("a missing checkpoint must be an error")


def test_retraining_changes_only_the_retrained_layer_and_fits_the_clean_examples():
    torch.manual_seed(1)
    net, data = MLP((6,), 3, [16]), _data(60)
    before = copy.deepcopy(net.state_dict())
    retrained = retrain_layer(net, layers(net)["head"], data, RetrainingParams(epochs=60, lr=0.05), seed=0)
    for name, value in retrained.state_dict().items():
        assert torch.equal(value, before[name]) is (not name.startswith("head.")), name
    assert all(p.requires_grad for p in retrained.parameters())
    clean = ~data.noisy
    fit = (retrained(data.x[clean]).argmax(1) == data.y[clean]).float().mean()
    start = (MLP((6,), 3, [16]).eval()(data.x[clean]).argmax(1) == data.y[clean]).float().mean()
    assert fit > 0.6 and fit > start


def _zero_by_weights(net: MLP, units: list[str]) -> MLP:
    """The same neurons switched off another way: the rows of the Linear feeding each ReLU set to 0."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for unit in units:
            layer, _, index = unit.rpartition(":")
            linear = getattr(out.body, layer.split(".")[-1].replace("relu", "fc"))
            linear.weight[int(index)] = 0
            linear.bias[int(index)] = 0
    return out


def test_greedy_flip_counts_are_the_fewest_of_its_order_and_collateral_matches_weight_zeroing():
    torch.manual_seed(0)
    net = MLP((6,), 3, [32, 32])
    data = _data(80)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):  # fit every (random) label: all are "memorized"
        opt.zero_grad()
        F.cross_entropy(net(data.x), data.y).backward()
        opt.step()
    net.eval()
    assert (net(data.x).argmax(1) == data.y).all()
    flips = greedy_flip(net, data.x[:12], data.y[:12], data.x[20:60], data.y[20:60], max_units=40)
    assert (flips.count > 0).all()
    for row in range(12):
        units = [flips.unit_name(u) for u in flips.zeroed[row]]
        assert len(units) == flips.count[row] == len(set(units))
        x, label = data.x[row:row + 1], int(data.y[row])
        with torch.no_grad():
            assert int(_zero_by_weights(net, units)(x).argmax(1)) != label
            assert int(_zero_by_weights(net, units[:-1])(x).argmax(1)) == label
    drops = collateral_drop(net, flips, data.x[60:], data.y[60:])
    with torch.no_grad():
        base = (net(data.x[60:]).argmax(1) == data.y[60:]).float().mean()
        for row in range(12):
            zeroed = _zero_by_weights(net, [flips.unit_name(u) for u in flips.zeroed[row]])
            after = (zeroed(data.x[60:]).argmax(1) == data.y[60:]).float().mean()
            assert np.isclose(drops[row], float(base - after))


def test_example_tied_dropout_method_refuses_a_model_trained_without_it():
    from types import SimpleNamespace

    from memeval_plugins.localization.example_tied_dropout import (
        ExampleTiedDropout,
        TiedDropoutMethodParams,
    )

    model = SimpleNamespace(summary_info={"trainer": {"name": "standard", "params": {}}})
    method = ExampleTiedDropout(TiedDropoutMethodParams())
    try:
        method.prepare([], SimpleNamespace(model=model, seed=0))
    except UsageError as exc:
        assert "trainer: example_tied_dropout" in str(exc) and "'standard'" in str(exc)
    else:
        raise AssertionError("a model trained without example-tied dropout must be a usage error")
