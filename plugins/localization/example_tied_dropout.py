"""Example-tied dropout (Maini et al. 2023, section 4): a trainer that directs memorization into
chosen neurons, and `localization.example_tied_dropout`, which measures what dropping them does.

In every layer of neurons (the outputs of the network's ReLU modules; a conv channel counts as
one) the first `p_gen` share are generalization neurons, active for every example. Each of the
others is one of an example's memorization neurons with chance `p_mem`, drawn once per example
(seeded) and fixed for the whole run: while training on example i, only the generalization
neurons and i's memorization neurons are on. At test time the memorization neurons are dropped.
No rescaling is applied in either mode. Mislabeled examples, which only their own neurons can fit,
should be forgotten when those are dropped, while test accuracy, carried by the generalization
neurons, stays."""

from __future__ import annotations

import math
from typing import Any

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
    Strict,
    Table,
    TorchThreads,
    Trainer,
    TrainingRun,
    TrainJob,
    TrainResult,
    UsageError,
    rate_metric,
)
from memeval_plugins.localization.probe import network_of, probe_data, unit_masks, units

MASK_PREFIX = "tied_mask:"  # training-log extras holding each layer's (examples, neurons) masks


class TiedDropoutParams(Strict):
    p_gen: float = Field(0.2, gt=0, le=1, description="share of each layer's neurons always on (generalization "
                                                      "neurons: the first ones)")
    p_mem: float = Field(0.1, ge=0, le=1, description="chance that each other neuron is one of an example's "
                                                      "memorization neurons")


def generalization_count(width: int, p_gen: float) -> int:
    return max(1, math.ceil(p_gen * width))


def draw_masks(sizes: dict[str, int], n: int, params: TiedDropoutParams, generator: torch.Generator
               ) -> dict[str, torch.Tensor]:
    """Per layer, an (n, width) 0/1 mask: generalization neurons always 1, each other neuron 1 with
    chance p_mem."""
    masks = {}
    for name, width in sizes.items():
        mask = (torch.rand(n, width, generator=generator) < params.p_mem).float()
        mask[:, :generalization_count(width, params.p_gen)] = 1.0
        masks[name] = mask
    return masks


def generalization_masks(sizes: dict[str, int], p_gen: float) -> dict[str, torch.Tensor]:
    out = {}
    for name, width in sizes.items():
        mask = torch.zeros(width)
        mask[:generalization_count(width, p_gen)] = 1.0
        out[name] = mask
    return out


def unit_sizes(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    with torch.no_grad(), unit_masks(net, {}) as acts:
        net(x[:1])
    return {name: acts[name].shape[1] for name in units(net)}


class TiedGate:
    """Forward hooks that switch neurons: an example's own mask while training (`select(idx)`),
    the generalization neurons only otherwise."""

    def __init__(self, net: nn.Module, masks: dict[str, torch.Tensor], p_gen: float):
        self.masks, self.index = masks, None
        self.general = generalization_masks({k: v.shape[1] for k, v in masks.items()}, p_gen)
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in units(net).items()]

    def select(self, index: Any) -> None:
        self.index = index

    def _hook(self, name: str):
        def apply(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            mask = self.masks[name][self.index] if self.index is not None else self.general[name]
            return out * mask.reshape(*mask.shape, *([1] * (out.dim() - 2)))
        return apply

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ExampleTiedDropoutTrainer(Trainer):
    """Cross-entropy on the noisy labels with example-tied dropout (see the module). The log is from
    the training steps, with each example's own neurons (as `standard`); test predictions and
    `final_*` drop the memorization neurons. The stored weights are the plain network (every neuron
    on); the per-example masks are kept in the log's extras (`tied_mask:<layer>`), so
    `localization.example_tied_dropout` can switch neurons either way."""

    name = "example_tied_dropout"
    summary = "example-tied dropout: generalization neurons always on, memorization neurons tied to each example"
    Params = TiedDropoutParams

    def train(self, job: TrainJob) -> TrainResult:
        p: TiedDropoutParams = self.params  # type: ignore[assignment]
        run = TrainingRun(job, self.networks)
        net, data = run.nets["net"], job.data
        sizes = unit_sizes(net, data.x)
        masks = draw_masks(sizes, data.n, p, torch.Generator().manual_seed(job.seed + 0x7E1D))
        gate = TiedGate(net, masks, p.p_gen)
        net.train()
        try:
            for epoch in range(1, job.optimizer.epochs + 1):
                for step, idx in enumerate(run.batches(data.n)):
                    gate.select(idx)
                    logits = net(data.x[idx])
                    losses = F.cross_entropy(logits, data.y[idx], reduction="none")
                    run.on_batch(epoch, step, "net", idx, losses)
                    run.step("net", losses.mean())
                    run.log.record(epoch, idx, losses, logits)
                gate.select(None)
                run.end_epoch(epoch, lambda: _predict(net, data.x_test))
            gate.select(None)
            result = run.finish(self.predict_with, {"generalization_neurons": {
                k: generalization_count(v, p.p_gen) for k, v in sizes.items()}, "neurons": sizes})
        finally:
            gate.remove()
        result.log.extras.update({MASK_PREFIX + k: v.numpy().astype(bool) for k, v in masks.items()})
        return result


@torch.no_grad()
def _predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    try:
        return net(x)
    finally:
        net.train(was)


# ---------------------------------------------------------------- the method


class TiedDropoutMethodParams(Params):
    network: str | None = Field(None, description="which of the trainer's networks; none: the first it predicts with")


class ExampleTiedDropout(Method):
    """Accuracies of a classifier trained by the `example_tied_dropout` trainer with and without its
    memorization neurons. With: every training example with its own memorization neurons (as it was
    trained), every test example with a fresh draw of the same kind (seeded: it has no neurons of its
    own). Without: the generalization neurons only. On the mislabeled training examples, accuracy is
    the share predicted as their noisy label (memorization). Records: one per training example, its
    prediction both ways."""

    name = "localization.example_tied_dropout"
    summary = "example-tied dropout: memorized noisy labels, clean fit and test accuracy with and without the memorization neurons"
    Params = TiedDropoutMethodParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("noisy_memorized_with", "noisy labels memorized with each example's memorization neurons", True),
        MetricSpec("noisy_memorized_without", "noisy labels memorized with the memorization neurons dropped", True),
        MetricSpec("clean_train_accuracy_with", "clean training accuracy with the memorization neurons", None),
        MetricSpec("clean_train_accuracy_without", "clean training accuracy without them", None),
        MetricSpec("test_accuracy_with", "test accuracy with random memorization neurons", None),
        MetricSpec("test_accuracy_without", "test accuracy with the memorization neurons dropped", None),
        MetricSpec("noisy_memorized_drop", "noisy_memorized_with - noisy_memorized_without", None),
        MetricSpec("test_accuracy_drop", "test_accuracy_with - test_accuracy_without", None),
    )
    records = {"index": "position in the training set", "noisy": "whether the label was flipped",
               "label": "the label trained on", "clean_label": "the true label",
               "prediction_with": "prediction with the example's memorization neurons",
               "prediction_without": "prediction with the generalization neurons only"}

    def _setup(self, context: Context) -> tuple[nn.Module, Any, dict[str, torch.Tensor], TiedDropoutParams]:
        model = context.model
        trainer = model.summary_info["trainer"]
        if trainer["name"] != ExampleTiedDropoutTrainer.name:
            raise UsageError(f"localization.example_tied_dropout needs a classifier trained with trainer: "
                             f"{ExampleTiedDropoutTrainer.name}; this one was trained with {trainer['name']!r}", field="model")
        tied = {k[len(MASK_PREFIX):]: torch.tensor(v, dtype=torch.float32)
                for k, v in model.training_log.extras.items() if k.startswith(MASK_PREFIX)}
        net = model.networks[network_of(model, self.params.network)].eval()
        return net, probe_data(model), tied, TiedDropoutParams.model_validate(trainer["params"])

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        net, data, tied, p = self._setup(context)
        general = generalization_masks({k: v.shape[1] for k, v in tied.items()}, p.p_gen)
        with TorchThreads(1), torch.no_grad():
            with unit_masks(net, tied):
                with_pred = net(data.x).argmax(1)
            with unit_masks(net, general):
                without_pred = net(data.x).argmax(1)
        return [{"index": i, "noisy": bool(data.noisy[i]), "label": int(data.y[i]), "clean_label": int(data.clean[i]),
                 "prediction_with": int(with_pred[i]), "prediction_without": int(without_pred[i])}
                for i in range(len(data.y))]

    def _test_hits(self, context: Context) -> dict[str, tuple[int, int]]:
        """Test examples right with a fresh draw of memorization neurons each, and without any."""
        net, data, tied, p = self._setup(context)
        sizes = {k: v.shape[1] for k, v in tied.items()}
        fresh = draw_masks(sizes, len(data.y_test), p, torch.Generator().manual_seed(context.seed))
        hits = {}
        with TorchThreads(1), torch.no_grad():
            for mode, masks in (("with", fresh), ("without", generalization_masks(sizes, p.p_gen))):
                with unit_masks(net, masks):
                    hits[mode] = (int((net(data.x_test).argmax(1) == data.y_test).sum()), len(data.y_test))
        return hits

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": str(r["index"]), **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        metrics = []
        for mode in ("with", "without"):
            noisy = [r[f"prediction_{mode}"] == r["label"] for r in records if r["noisy"]]
            clean = [r[f"prediction_{mode}"] == r["clean_label"] for r in records if not r["noisy"]]
            metrics.append(rate_metric(f"noisy_memorized_{mode}", sum(noisy), len(noisy)))
            metrics.append(rate_metric(f"clean_train_accuracy_{mode}", sum(clean), len(clean)))
        for mode, (hits, total) in self._test_hits(context).items():
            metrics.append(rate_metric(f"test_accuracy_{mode}", hits, total))
        value = {m.name: m.value for m in metrics}
        metrics.append(Metric("noisy_memorized_drop", value["noisy_memorized_with"] - value["noisy_memorized_without"]))
        metrics.append(Metric("test_accuracy_drop", value["test_accuracy_with"] - value["test_accuracy_without"]))
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        value = {m.name: m.value for m in evaluation.metrics}
        kinds = [("noisy_memorized", "noisy labels memorized"), ("clean_train_accuracy", "clean training accuracy"),
                 ("test_accuracy", "test accuracy")]
        series = [Series(label, [0.0, 1.0], [value[f"{k}_with"], value[f"{k}_without"]]) for k, label in kinds
                  if f"{k}_with" in value and f"{k}_without" in value]
        blocks: list[Any] = [
            LinePlot("Dropping the memorization neurons (x: 0 with them, 1 without)", "memorization neurons dropped",
                     "share", series, x_range=(0.0, 1.0), y_range=(0.0, 1.0), markers=True),
            Table(["", "with memorization neurons", "without", "drop"],
                  [[label, round(value[f"{k}_with"], 4), round(value[f"{k}_without"], 4),
                    round(value[f"{k}_with"] - value[f"{k}_without"], 4)] for k, label in kinds
                   if f"{k}_with" in value and f"{k}_without" in value], title="Example-tied dropout"),
        ]
        return [Section("Example-tied dropout", blocks)]



