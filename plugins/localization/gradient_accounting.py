"""`localization.gradient_accounting`: per layer and epoch, the share of the training gradient's
norm that the mislabeled examples contribute, against the clean ones (Maini et al. 2023, section 3.1).

A probe of the training run: at each stored checkpoint, the gradient of the mean training loss
(noisy labels, the whole training set) splits exactly into the part from mislabeled examples and
the part from clean ones, g = g_noisy + g_clean (both divided by the full n). Per layer, the noisy
share is |g_noisy| / (|g_noisy| + |g_clean|) and the clean share the rest, so the two sum to one.
With full-batch training this is the very gradient of the next epoch's step; with mini-batches, its
expectation. Store a checkpoint every epoch (`checkpoint_every: 1`) for per-epoch curves."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from memeval.api import (
    Context,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    Series,
    Table,
    TorchThreads,
)
from memeval_plugins.localization.probe import ProbeData, layers, network_of, probe_data


class AccountingParams(Params):
    network: str | None = Field(None, description="which of the trainer's networks; none: the first it predicts with")


def gradient_shares(net: nn.Module, data: ProbeData) -> list[dict[str, Any]]:
    """Per layer: the norms of the noisy and clean parts of the mean-loss gradient and their shares."""
    net.eval()
    losses = F.cross_entropy(net(data.x), data.y, reduction="none") / len(data.y)
    params = dict(net.named_parameters())
    parts = {}
    for group, where in (("noisy", data.noisy), ("clean", ~data.noisy)):
        grads = torch.autograd.grad(losses[where].sum(), list(params.values()), retain_graph=True, allow_unused=True)
        parts[group] = dict(zip(params, grads, strict=True))
    rows = []
    for position, (layer, names) in enumerate(layers(net).items(), start=1):
        norm = {g: float(torch.sqrt(sum((parts[g][n] if parts[g][n] is not None else torch.zeros(1)).pow(2).sum()
                                        for n in names))) for g in parts}
        total = norm["noisy"] + norm["clean"]
        share = norm["noisy"] / total if total > 0 else float("nan")
        rows.append({"layer": layer, "position": position, "noisy_norm": norm["noisy"], "clean_norm": norm["clean"],
                     "noisy_share": share, "clean_share": 1.0 - share})
    return rows


class GradientAccounting(Method):
    """The noisy/clean split of the training gradient per layer, at every stored checkpoint but
    the last (the gradient that checkpoint's next epoch stepped along). Records: one per (epoch,
    layer). Metrics: the mean noisy share over layers and epochs, its peak (the epoch and layer
    where the mislabeled examples dominate most) and the share of mislabeled examples in the
    training set, the share they would have if every example pulled equally."""

    name = "localization.gradient_accounting"
    summary = "per layer and epoch: share of the gradient norm from mislabeled vs. clean examples (sums to one)"
    Params = AccountingParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("noisy_gradient_share_mean", "mean over epochs and layers of the mislabeled examples' share of "
                                                "the gradient norm", True),
        MetricSpec("noisy_gradient_share_max", "its largest value (one epoch, one layer)", True),
        MetricSpec("noise_rate", "share of mislabeled training examples", None),
    )
    records = {"epoch": "the checkpoint epoch (0: initialisation)", "layer": "module owning the parameters",
               "position": "1-based position of the layer", "noisy_norm": "norm of the mislabeled examples' part",
               "clean_norm": "norm of the clean examples' part", "noisy_share": "noisy_norm / (noisy_norm + clean_norm)",
               "clean_share": "1 - noisy_share"}

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        p: AccountingParams = self.params  # type: ignore[assignment]
        model = context.model
        network, data = network_of(model, p.network), probe_data(model)
        rows = []
        with TorchThreads(1):
            for epoch in model.checkpoint_epochs[:-1]:
                rows += [{"epoch": epoch, **row} for row in gradient_shares(model.model_at(epoch, network), data)]
        return rows

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": f"{r['epoch']}/{r['layer']}", **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        shares = np.array([r["noisy_share"] for r in records], dtype=float)
        noise = float(context.model.labels.mask.mean())
        return [Metric("noisy_gradient_share_mean", float(np.nanmean(shares)), n=len(shares)),
                Metric("noisy_gradient_share_max", float(np.nanmax(shares)), n=len(shares)),
                Metric("noise_rate", noise, n=len(context.model.labels.mask))]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        rows = list(records)
        by_layer: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_layer.setdefault(r["layer"], []).append(r)
        series = [Series(layer, [float(r["epoch"]) for r in group], [r["noisy_share"] for r in group])
                  for layer, group in by_layer.items()]
        noise = next((m.value for m in evaluation.metrics if m.name == "noise_rate"), None)
        if noise is not None and rows:
            epochs = sorted({float(r["epoch"]) for r in rows})
            series.append(Series("share of mislabeled examples", [epochs[0], epochs[-1]], [noise, noise]))
        blocks: list[Any] = [LinePlot("Share of the gradient norm from mislabeled examples, per layer", "epoch",
                                      "noisy share", series, y_range=(0.0, 1.0))]
        table = [[layer, round(float(np.nanmean([r["noisy_share"] for r in group])), 4),
                  round(float(np.nanmax([r["noisy_share"] for r in group])), 4)] for layer, group in by_layer.items()]
        blocks.append(Table(["layer", "mean noisy share", "max noisy share"], table, title="Gradient accounting"))
        return [Section("Gradient accounting", blocks)]
