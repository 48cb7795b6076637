"""Trainers: deterministic logs, what the log means, checkpoints, callbacks, and each method's own
bookkeeping, on a miniature (240 digits, 6 epochs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from miniature import tiny
from scipy.spatial.distance import jensenshannon

from memeval.train.classifier import make_noise, resolve_trainer, run_training
from memeval.train.sources import load_source
from memeval.train.trainers import (
    BUILTIN_TRAINERS,
    BatchState,
    EpochState,
    TrainerCallback,
    js_divergence,
    normalised_per_class,
    predict,
)

TRAINERS = sorted(BUILTIN_TRAINERS)


def train(trainer: str = "standard", seed: int = 0, callbacks=(), **overrides):
    params = tiny(trainer=trainer, **overrides)
    data = load_source(params.source)
    noisy = make_noise(params, data, seed)
    result = run_training(params, resolve_trainer(params, BUILTIN_TRAINERS), data, noisy, seed, tuple(callbacks))
    return result, data, noisy


def log_arrays(result):
    return result.log.arrays()


@pytest.mark.parametrize("trainer", TRAINERS)
def test_same_seed_gives_identical_logs_and_weights(trainer):
    a, _, _ = train(trainer, seed=3)
    b, _, _ = train(trainer, seed=3)
    c, _, _ = train(trainer, seed=4)
    arrays_a, arrays_b = log_arrays(a), log_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        if key != "epoch_seconds":
            assert np.array_equal(arrays_a[key], arrays_b[key], equal_nan=True), key
    for name in a.networks:
        for k, v in a.networks[name].state_dict().items():
            assert torch.equal(v, b.networks[name].state_dict()[k])
    assert not np.array_equal(a.log.loss, c.log.loss)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_log_shapes_and_checkpoints(trainer):
    result, data, _ = train(trainer)
    epochs, n = 6, len(data.y_train)
    assert result.log.loss.shape == result.log.pred.shape == (epochs, n)
    assert result.log.test_pred.shape == (epochs, len(data.y_test))
    assert np.isfinite(result.log.loss).all() and (result.log.pred >= 0).all() and (result.log.test_pred >= 0).all()
    assert sorted(result.checkpoints) == list(range(epochs + 1))
    last = result.checkpoints[epochs]
    for name, net in result.networks.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, last[name][key])  # the last checkpoint is the trained model
    assert set(result.checkpoints[0]) == set(BUILTIN_TRAINERS[trainer].networks)


def test_full_batch_standard_log_is_the_model_at_the_start_of_each_epoch():
    result, data, noisy = train("standard")
    x, y = torch.tensor(data.x_train), torch.tensor(noisy.labels)
    model = torch.nn.Sequential()  # placeholder for typing
    for epoch in range(1, 7):
        model = _model_from(result, epoch - 1)
        logits = predict(model, x)
        assert np.array_equal(result.log.pred[epoch - 1], logits.argmax(1).numpy())
        assert np.allclose(result.log.loss[epoch - 1], F.cross_entropy(logits, y, reduction="none").numpy(), atol=1e-5)
        after = predict(_model_from(result, epoch), torch.tensor(data.x_test))
        assert np.array_equal(result.log.test_pred[epoch - 1], after.argmax(1).numpy())
    final = predict(result.networks["net"], x).argmax(1).numpy()
    assert np.array_equal(result.log.final_pred, final)


def _model_from(result, epoch):
    from memeval.train.architectures import MLP

    model = MLP((1, 8, 8), 10, [32])
    model.load_state_dict(result.checkpoints[epoch]["net"])
    return model


class GradientSplit(TrainerCallback):
    """Per step, the gradient of the summed loss of the noisy examples and of the clean ones,
    per layer: what gradient accounting (localization) needs from the batch hook."""

    def __init__(self, mask: np.ndarray):
        self.mask = torch.from_numpy(mask)
        self.max_error = 0.0
        self.noisy_share: list[float] = []
        self.epochs: list[int] = []

    def on_batch(self, state: BatchState) -> None:
        params = [p for p in state.model.parameters()]
        noisy = self.mask[state.indices]
        grads = {}
        for name, rows in (("noisy", noisy), ("clean", ~noisy), ("all", torch.ones_like(noisy))):
            grads[name] = torch.autograd.grad(state.losses[rows].sum(), params, retain_graph=True)
        for g_n, g_c, g_a in zip(grads["noisy"], grads["clean"], grads["all"], strict=True):
            self.max_error = max(self.max_error, float((g_n + g_c - g_a).abs().max()))
        norm_noisy = sum(float(g.norm()) for g in grads["noisy"])
        norm_clean = sum(float(g.norm()) for g in grads["clean"])
        self.noisy_share.append(norm_noisy / (norm_noisy + norm_clean))

    def on_epoch_end(self, state: EpochState) -> None:
        assert (state.log.pred[state.epoch - 1] >= 0).all()
        self.epochs.append(state.epoch)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_batch_hook_gives_per_subset_gradients_and_does_not_change_training(trainer):
    plain, _, noisy = train(trainer, optimizer={"batch_size": 64})
    hook = GradientSplit(noisy.mask)
    hooked, _, _ = train(trainer, callbacks=[hook], optimizer={"batch_size": 64})
    assert hook.epochs == [1, 2, 3, 4, 5, 6]
    assert hook.max_error < 1e-4 and len(hook.noisy_share) >= 6 * 4
    assert all(0.0 <= s <= 1.0 for s in hook.noisy_share)
    assert np.array_equal(plain.log.pred, hooked.log.pred)
    for name in plain.networks:
        for key, value in plain.networks[name].state_dict().items():
            assert torch.equal(value, hooked.networks[name].state_dict()[key])


def test_crosssplit_bookkeeping():
    result, data, noisy = train("crosssplit")
    extras, n = result.log.extras, len(data.y_train)
    assert sorted(np.bincount(extras["split"]).tolist()) == [n // 2, n - n // 2]
    assert (extras["corrected"][:2] == -1).all() and (extras["corrected"][2:] >= 0).all()  # 2 warm-up epochs
    beta = extras["beta"]
    assert np.isnan(beta[:2]).all() and np.isfinite(beta[2:]).all()
    for epoch, gamma in ((3, 0.6), (4, 0.6), (5, 0.8), (6, 1.0)):  # delta 1: 2 epochs at 0.6, 1 at 0.8, then 1
        row = beta[epoch - 1]
        assert row.min() >= 0.5 - gamma / 2 - 1e-6 and row.max() <= 0.5 + gamma / 2 + 1e-6
        assert np.isclose(row.min(), 0.5 - gamma / 2, atol=1e-6)  # min-max scaling reaches the ends
    assert extras["own_pred"].shape == (6, n) and (extras["own_pred"] >= 0).all()
    assert result.info["split_sizes"] == [n // 2, n - n // 2]


def test_coteaching_keeps_the_small_loss_share():
    result, data, _ = train("coteaching", optimizer={"epochs": 12},
                            trainer_params={"coteaching": {"num_gradual": 4, "forget_rate": 0.25}})
    kept = result.log.extras["selected"].sum(axis=1)
    n = len(data.y_train)
    for epoch in range(12):
        rate = 0.25 * min(epoch / 4, 1.0)
        assert kept[epoch] == n - int(rate * n)


def test_coteaching_defaults_to_the_configured_noise_rate():
    result, _, _ = train("coteaching")
    assert result.info["forget_rate"] == 0.4


def test_jensen_shannon_and_per_class_normalisation_match_direct_computations():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), size=8), rng.dirichlet(np.ones(5), size=8)
    ours = js_divergence(torch.from_numpy(p), torch.from_numpy(q)).numpy()
    assert np.allclose(ours, jensenshannon(p, q, axis=1) ** 2, atol=1e-8)
    values, labels = rng.random(40), rng.integers(0, 4, size=40)
    got = normalised_per_class(torch.from_numpy(values), torch.from_numpy(labels), 5).numpy()
    for c in range(4):
        v = values[labels == c]
        assert np.allclose(got[labels == c], (v - v.min()) / (v.max() - v.min()))
