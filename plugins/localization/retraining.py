"""`localization.retraining`: rewind one layer to an earlier checkpoint, then retrain only that
layer on the clean training examples (Maini et al. 2023, section 3.2). If a single layer held the
memorization, retraining it without the mislabeled examples would forget them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from memeval.api import (
    Context,
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Records,
    Section,
    TorchThreads,
)
from memeval_plugins.localization.layer_rewinding import (
    LayerRewinding,
    RewindingParams,
    layer_metrics,
    layer_section,
    rewind,
    rewind_setup,
)
from memeval_plugins.localization.probe import ProbeData, accuracies, layers, probe_data


class RetrainingParams(RewindingParams):
    epochs: int = Field(10, ge=1, description="passes over the clean training examples")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate for the retrained layer")
    batch_size: int | None = Field(64, ge=1, description="examples per step; none: all clean examples")


def retrain_layer(net: nn.Module, names: list[str], data: ProbeData, params: RetrainingParams, seed: int) -> nn.Module:
    """Adam on the parameters `names` only (the rest frozen), cross-entropy on the clean examples."""
    trainable = [p for n, p in net.named_parameters() if n in set(names)]
    for n, p in net.named_parameters():
        p.requires_grad_(n in set(names))
    x, y = data.x[~data.noisy], data.y[~data.noisy]
    optimizer = torch.optim.Adam(trainable, lr=params.lr)
    generator = torch.Generator().manual_seed(seed)
    size = params.batch_size or len(y)
    net.train()
    for _ in range(params.epochs):
        for idx in torch.randperm(len(y), generator=generator).split(size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            optimizer.step()
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval()


class Retraining(Method):
    """For each layer: the trained network with that layer rewound to the `rewind_epoch`
    checkpoint and then retrained alone (Adam, `epochs` passes) on the clean training examples
    only; the same three accuracies as `localization.layer_rewinding`. One record per layer plus
    the trained network (`layer: null`)."""

    name = "localization.retraining"
    summary = "rewind one layer, retrain it on clean examples only: memorized noisy labels, clean fit, test accuracy"
    Params = RetrainingParams
    requires = LayerRewinding.requires
    needs_dataset = False
    metrics = tuple(MetricSpec(m.name, m.description.replace("rewinding", "rewinding and retraining"),
                               m.higher_is_worse) for m in LayerRewinding.metrics)
    records = {**LayerRewinding.records, "rewind_epoch": "the checkpoint the layer was rewound to before retraining"}

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        p: RetrainingParams = self.params  # type: ignore[assignment]
        model = context.model
        _, epoch, net, checkpoint = rewind_setup(model, p)
        data = probe_data(model)
        with TorchThreads(1):
            rows = [{"layer": None, "position": 0, "rewind_epoch": None, **accuracies(net, data)}]
            for position, (layer, names) in enumerate(layers(net).items(), start=1):
                retrained = retrain_layer(rewind(net, checkpoint, names), names, data, p, context.seed + position)
                rows.append({"layer": layer, "position": position, "rewind_epoch": epoch,
                             **accuracies(retrained, data)})
        return rows

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": r["layer"] or "trained", **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        return layer_metrics(records)

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return [layer_section("Layer retraining on clean examples", "rewound to epoch", list(records))]

