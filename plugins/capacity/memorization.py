"""Random-label memorization: how far a network gets in fitting N random ±1 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from memeval.api import Strict


class FitParams(Strict):
    epochs: int = Field(1000, ge=1, description="full-batch Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam's learning rate")


@dataclass
class Fit:
    loss: float      # final mean squared error, ½ (f(x) - y)² averaged over the samples
    fit_rate: float  # share of samples whose output has its label's sign
    initial_loss: float


def random_labels(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1


def fit_random_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: FitParams) -> Fit:
    """Train `model` in place on (x, y) with the squared loss; full batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    model.train()
    initial = None
    for _ in range(params.epochs):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * (model(x).reshape(-1) - y).pow(2).mean()
        initial = float(loss.detach()) if initial is None else initial
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x).reshape(-1)
    return Fit(float(0.5 * (out - y).pow(2).mean()), float((torch.sign(out) == y).double().mean()), initial)
