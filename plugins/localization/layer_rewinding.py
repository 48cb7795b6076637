"""`localization.layer_rewinding`: rewind one layer at a time to an earlier checkpoint of the same
training run and see which examples the model still gets "right" (Maini et al. 2023, section 3.2).

If memorization of the mislabeled examples lived in the last layers, rewinding those would undo
it; the paper finds it spread over layers, with rewinding the last layer leaving most noisy labels
memorized."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
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
    Text,
    TorchThreads,
    UsageError,
)
from memeval_plugins.localization.probe import (
    ACCURACIES,
    accuracies,
    layers,
    network_of,
    probe_data,
)

REWIND_SHARE = 0.2


class RewindingParams(Params):
    rewind_epoch: int | None = Field(None, ge=0, description="checkpoint epoch to rewind to (0: initialisation); "
                                                             "none: the checkpoint nearest 20% of the training run")
    network: str | None = Field(None, description="which of the trainer's networks; none: the first it predicts with")


def rewind_epoch(requested: int | None, available: list[int], epochs: int) -> int:
    if requested is None:
        return min(available, key=lambda e: (abs(e - REWIND_SHARE * epochs), e))
    if requested not in available:
        raise UsageError(f"rewind_epoch {requested} is not a stored checkpoint; the classifier has checkpoints at "
                         f"epochs {available} (set checkpoint_every on the model to keep more)",
                         field="params.rewind_epoch")
    return requested


def rewind(net: nn.Module, checkpoint: Mapping[str, torch.Tensor], names: list[str]) -> nn.Module:
    """A copy of `net` whose parameters `names` are the checkpoint's (exact copies); the rest untouched."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        owned = dict(out.named_parameters())
        for name in names:
            owned[name].copy_(checkpoint[name])
    return out.eval()


def rewind_setup(model: Any, params: Any) -> tuple[str, int, nn.Module, dict[str, torch.Tensor]]:
    network = network_of(model, params.network)
    epoch = rewind_epoch(params.rewind_epoch, model.checkpoint_epochs, int(model.summary_info["epochs"]))
    return network, epoch, model.networks[network], model.checkpoint(epoch)[network]


class LayerRewinding(Method):
    """For each layer (a module with parameters), the trained network with that layer's weights
    rewound to the `rewind_epoch` checkpoint, all others trained: how many mislabeled training
    examples it still predicts as their noisy label (`noisy_memorized`), and its accuracy on the
    clean training examples and the test set. One record per layer, plus one for the trained
    network as it is (`layer: null`)."""

    name = "localization.layer_rewinding"
    summary = "rewind one layer at a time to an earlier checkpoint: memorized noisy labels, clean fit, test accuracy"
    Params = RewindingParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("trained_noisy_memorized", "noisy labels memorized by the trained network (no rewinding)", True),
        MetricSpec("last_layer_noisy_memorized", "noisy labels still memorized after rewinding the last layer", True),
        MetricSpec("min_noisy_memorized", "noisy labels still memorized after rewinding the layer that undoes "
                                          "the most", True),
        MetricSpec("min_noisy_layer_position", "position (1 = first) of that layer", None),
        MetricSpec("layers", "number of layers rewound", None),
    )
    records = {"layer": "the rewound layer (null: none)", "position": "1-based position of the layer",
               "rewind_epoch": "the checkpoint its weights come from", **ACCURACIES}

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        model = context.model
        network, epoch, net, checkpoint = rewind_setup(model, self.params)
        data = probe_data(model)
        with TorchThreads(1):
            rows = [{"layer": None, "position": 0, "rewind_epoch": None, **accuracies(net, data)}]
            for position, (layer, names) in enumerate(layers(net).items(), start=1):
                rewound = rewind(net, checkpoint, names)
                rows.append({"layer": layer, "position": position, "rewind_epoch": epoch, **accuracies(rewound, data)})
        return rows

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": r["layer"] or "trained", **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        return layer_metrics(records)

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return [layer_section("Layer rewinding", "rewound to epoch", list(records))]


def layer_metrics(records: list[dict[str, Any]]) -> list[Metric]:
    trained = next(r for r in records if r["layer"] is None)
    per_layer = [r for r in records if r["layer"] is not None]
    worst = min(per_layer, key=lambda r: (r["noisy_memorized"], r["position"]))
    return [Metric("trained_noisy_memorized", trained["noisy_memorized"]),
            Metric("last_layer_noisy_memorized", per_layer[-1]["noisy_memorized"]),
            Metric("min_noisy_memorized", worst["noisy_memorized"]),
            Metric("min_noisy_layer_position", float(worst["position"])),
            Metric("layers", float(len(per_layer)))]


def layer_section(title: str, what: str, records: list[dict[str, Any]]) -> Section:
    per_layer = sorted((r for r in records if r["layer"] is not None), key=lambda r: r["position"])
    trained = next((r for r in records if r["layer"] is None), None)
    x = [float(r["position"]) for r in per_layer]
    series = [Series(key.replace("_", " "), x, [r[key] for r in per_layer]) for key in ACCURACIES]
    blocks: list[Any] = [LinePlot(f"{title}: accuracies with one layer changed (x: layer position)", "layer",
                                  "share", series, y_range=(0.0, 1.0), markers=True)]
    columns = ["position", "layer", what, *ACCURACIES]
    rows = [[r["position"], r["layer"] or "(trained, none changed)", r["rewind_epoch"],
             *(round(r[k], 4) for k in ACCURACIES)] for r in ([trained] if trained else []) + per_layer]
    blocks.append(Table(columns, rows, title=title))
    if per_layer:
        worst = min(per_layer, key=lambda r: (r["noisy_memorized"], r["position"]))
        blocks.append(Text(f"Changing {worst['layer']} (layer {worst['position']} of {len(per_layer)}) undoes the "
                           f"most memorization: {worst['noisy_memorized']:.3f} of the noisy labels stay memorized; "
                           f"changing the last layer leaves {per_layer[-1]['noisy_memorized']:.3f}."))
    return Section(title, blocks)
