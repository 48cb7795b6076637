"""influence.self_influence pieces against independent computations: the last-layer score against
an explicitly inverted autograd Hessian, TracIn's per-example gradient norms against a loop of
single-example backward passes, and its checkpoint weights against torch's own LR scheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memeval.threads import TorchThreads
from memeval.train.architectures import SmallCNN
from memeval_plugins.influence.self_influence import (
    checkpoint_weights,
    last_layer_self_influence,
    per_example_sq_norms,
    thinned_roc,
    top_k_precision,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one torch thread (as the methods do), and a shared machine stays usable."""
    with TorchThreads(1):
        yield

def _tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def test_last_layer_self_influence_equals_explicitly_inverted_hessian():
    net = _tiny_mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(25, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=gen)
    damping = 0.05
    head = net[2]
    with torch.no_grad():
        h = net[1](net[0](x))
    theta0 = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).flatten()

    def loss(theta: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        wb = theta.reshape(3, 6)
        return F.cross_entropy(h[rows] @ wb[:, :5].T + wb[:, 5], y[rows])

    hessian = torch.autograd.functional.hessian(loss, theta0) + damping * torch.eye(len(theta0), dtype=torch.float64)
    inverse = torch.linalg.inv(hessian)
    expected = []
    for i in range(len(y)):
        g = torch.autograd.functional.jacobian(lambda t, i=i: loss(t, slice(i, i + 1)), theta0)
        expected.append(float(g @ inverse @ g))
    np.testing.assert_allclose(last_layer_self_influence(net, x, y, damping), expected, rtol=1e-9)
    assert np.ptp(expected) > 0.1 * np.mean(expected)  # the scores differ: the comparison is not vacuous


def test_damping_changes_the_score_as_the_inverse_says():
    net = _tiny_mlp(3)
    x, y = torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,))
    low, high = last_layer_self_influence(net, x, y, 1e-3), last_layer_self_influence(net, x, y, 10.0)
    assert np.all(high < low)  # more damping, smaller inverse


def test_per_example_gradient_norms_equal_single_example_backward_passes():
    torch.manual_seed(0)
    net = SmallCNN((1, 4, 4), 3, channels=[2, 3], hidden=4)
    x, y = torch.randn(7, 1, 4, 4), torch.randint(0, 3, (7,))
    expected = []
    for i in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
        expected.append(sum(float(p.grad.pow(2).sum()) for p in net.parameters()))
    np.testing.assert_allclose(per_example_sq_norms(net, x, y, chunk=3).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_checkpoint_weights_sum_the_learning_rates_torch_uses(schedule):
    epochs, lr = 12, 0.1
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine" else None
    used = []
    for _ in range(epochs):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
    weights = checkpoint_weights([0, 3, 8, 12], {"epochs": epochs, "lr": lr, "schedule": schedule})
    assert list(weights) == [0, 3, 8]  # the last checkpoint stands for no further steps
    for (start, end), w in zip([(0, 3), (3, 8), (8, 12)], weights.values(), strict=True):
        assert math.isclose(w, sum(used[start:end]), rel_tol=1e-9)


def test_precision_and_roc_summaries():
    noisy = np.array([1, 0, 1, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.1, 0.3, 0.2])
    assert top_k_precision(noisy, scores) == 0.5  # top 2: one mislabeled
    roc = thinned_roc(noisy, scores)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and roc["fpr"][-1] == 1
