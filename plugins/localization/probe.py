"""What the localization methods share: the trained classifier's data as tensors, the three
accuracies (memorized noisy labels, clean training fit, test), the network's layers and units."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from memeval.api import UsageError

ACCURACIES = {"noisy_memorized": "share of mislabeled training examples predicted as their (noisy) training label",
              "clean_train_accuracy": "share of clean training examples predicted correctly",
              "test_accuracy": "accuracy on the clean test labels"}


@dataclass
class ProbeData:
    """Training inputs with the labels trained on (`y`), the clean labels and the noise mask
    (measurement only), and the test set."""

    x: torch.Tensor
    y: torch.Tensor
    clean: torch.Tensor
    noisy: torch.Tensor  # bool: the label was flipped
    x_test: torch.Tensor
    y_test: torch.Tensor


def probe_data(model: Any) -> ProbeData:
    data, labels = model.data(), model.labels
    return ProbeData(torch.tensor(data.x_train), torch.tensor(labels.noisy, dtype=torch.long),
                     torch.tensor(labels.clean, dtype=torch.long), torch.tensor(labels.mask, dtype=torch.bool),
                     torch.tensor(data.x_test), torch.tensor(labels.test, dtype=torch.long))


def network_of(model: Any, name: str | None) -> str:
    return name or model.model.predict_with[0]


@torch.no_grad()
def predictions(net: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    net.eval()
    return torch.cat([net(part).argmax(1) for part in x.split(chunk)])


def accuracies(net: nn.Module, data: ProbeData) -> dict[str, float]:
    pred, test = predictions(net, data.x), predictions(net, data.x_test)
    return {"noisy_memorized": _share(pred[data.noisy] == data.y[data.noisy]),
            "clean_train_accuracy": _share(pred[~data.noisy] == data.clean[~data.noisy]),
            "test_accuracy": _share(test == data.y_test)}


def _share(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if len(hits) else float("nan")


def layers(net: nn.Module) -> OrderedDict[str, list[str]]:
    """Parameter names grouped by the module that owns them ('body.fc1' -> ['body.fc1.weight', ...]),
    in definition order."""
    grouped: OrderedDict[str, list[str]] = OrderedDict()
    for name, _ in net.named_parameters():
        grouped.setdefault(name.rpartition(".")[0], []).append(name)
    return grouped


def units(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """The network's neurons, as the outputs of its ReLU modules (a channel for a conv map)."""
    found = OrderedDict((name, m) for name, m in net.named_modules() if isinstance(m, nn.ReLU))
    if not found:
        raise UsageError(f"{type(net).__name__} has no nn.ReLU module whose outputs could be its neurons")
    return found


@contextmanager
def unit_masks(net: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Multiply each ReLU's output by masks[name] (shape (batch, channels) or (channels,)), and keep
    the masked outputs (with their graph) in the yielded dict, per forward pass."""
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def apply(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            mask = masks.get(name)
            if mask is not None:
                out = out * mask.reshape(*mask.shape, *([1] * (out.dim() - 2)))  # over a conv map's positions
            captured[name] = out
            return out
        return apply

    handles = [module.register_forward_hook(hook(name)) for name, module in units(net).items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def first_rows(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n positions of `values` (all of them when n is larger), seeded and sorted."""
    if n >= len(values):
        return np.sort(values)
    return np.sort(np.random.default_rng(seed).choice(values, n, replace=False))
