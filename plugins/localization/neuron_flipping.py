"""`localization.neuron_flipping`: for each example, the fewest neurons (or conv channels) whose
zeroing flips its prediction, chosen greedily (Maini et al. 2023, section 3.3).

Each step ranks the units still on by the example's first-order importance, the drop in its loss
towards its training label were the unit zeroed, -sum(activation x d loss / d activation) over the
unit's positions, minus the same importance averaged over a reference batch of other training
examples (computed once, on the intact network, so that units the rest of the data relies on are
spared); it zeroes the top one and
repeats until the prediction leaves the training label, at most `max_units` times. Memorized
(mislabeled) examples flip after far fewer units than clean ones."""

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
    histogram_of,
    roc_auc,
    roc_metric,
)
from memeval_plugins.localization.probe import (
    first_rows,
    network_of,
    predictions,
    probe_data,
    unit_masks,
    units,
)


class FlippingParams(Params):
    examples_per_group: int = Field(50, ge=1, description="mislabeled and clean training examples flipped, each "
                                                          "(drawn among those the model predicts as their label)")
    max_units: int = Field(64, ge=1, description="give up on an example after zeroing this many units")
    reference_size: int = Field(256, ge=1, description="other training examples whose mean importance is subtracted")
    collateral_size: int = Field(256, ge=1, description="other clean training examples whose accuracy is measured "
                                                        "with each example's units zeroed")
    network: str | None = Field(None, description="which of the trainer's networks; none: the first it predicts with")


class Flips:
    """The outcome of greedy flipping for a batch of examples."""

    def __init__(self, count: np.ndarray, zeroed: list[list[int]], names: list[str], sizes: list[int],
                 masks: dict[str, torch.Tensor]):
        self.count, self.zeroed, self.names, self.sizes, self.masks = count, zeroed, names, sizes, masks

    def unit_name(self, flat: int) -> str:
        for name, size in zip(self.names, self.sizes, strict=True):
            if flat < size:
                return f"{name}:{flat}"
            flat -= size
        raise IndexError(flat)


def importance(net: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: dict[str, torch.Tensor],
               names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and, per example and unit (layers concatenated), -sum(a * dL/da) over the unit's positions."""
    with unit_masks(net, masks) as acts:
        logits = net(x)
        outs = [acts[n] for n in names]
        grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), outs)
    scores = [-(a * g).flatten(2).sum(2) if a.dim() > 2 else -(a * g) for a, g in zip(outs, grads, strict=True)]
    return logits.detach(), torch.cat(scores, 1).detach()


def greedy_flip(net: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor,
                max_units: int) -> Flips:
    net.eval()
    names = list(units(net))
    with unit_masks(net, {}) as acts:
        net(x[:1])
        sizes = [acts[n].shape[1] for n in names]
    reference = importance(net, x_ref, y_ref, {}, names)[1].mean(0)
    m, total = len(x), sum(sizes)
    flat = torch.ones(m, total)
    count = np.full(m, -1)
    zeroed: list[list[int]] = [[] for _ in range(m)]
    done = torch.zeros(m, dtype=torch.bool)
    for step in range(max_units + 1):
        masks = dict(zip(names, flat.split(sizes, 1), strict=True))
        logits, scores = importance(net, x, y, masks, names)
        flipped = (logits.argmax(1) != y) & ~done
        count[flipped.numpy()] = step
        done |= flipped
        if done.all() or step == max_units:
            break
        ranked = (scores - reference).masked_fill(flat == 0, -torch.inf).argmax(1)
        for row in (~done).nonzero().flatten().tolist():
            flat[row, ranked[row]] = 0.0
            zeroed[row].append(int(ranked[row]))
    return Flips(count, zeroed, names, sizes, dict(zip(names, flat.split(sizes, 1), strict=True)))


def collateral_drop(net: nn.Module, flips: Flips, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per flipped example: accuracy on (x, y) without minus with that example's units zeroed."""
    base = float((predictions(net, x) == y).float().mean())
    out = []
    with torch.no_grad():
        for row in range(len(flips.count)):
            with unit_masks(net, {n: m[row] for n, m in flips.masks.items()}):
                out.append(base - float((net(x).argmax(1) == y).float().mean()))
    return np.array(out)


class NeuronFlipping(Method):
    """Greedy example-wise neuron flipping on `examples_per_group` mislabeled and as many clean
    training examples that the trained network predicts as their training label. Neurons are the
    outputs of the network's ReLU modules (a channel of a conv map counts as one).

    Records: one per example: the number of units zeroed to flip it (null when `max_units` did not
    flip it), which units, how many per layer, the new prediction, and the collateral drop in
    accuracy on other clean training examples with those units zeroed. Metrics: the median count
    for mislabeled and clean examples (unflipped ones count as max_units + 1), their difference,
    the AUC of a small count for telling mislabeled from clean, the shares flipped and the mean
    collateral drops."""

    name = "localization.neuron_flipping"
    summary = "fewest neurons to zero (greedy, gradient-ranked) to flip each example: mislabeled vs. clean"
    Params = FlippingParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("median_units_noisy", "median units zeroed to flip a mislabeled example", False),
        MetricSpec("median_units_clean", "median units zeroed to flip a clean example", None),
        MetricSpec("median_units_margin", "median for clean minus median for mislabeled examples", True),
        MetricSpec("flip_count_auc", "AUC of a small flip count for detecting the mislabeled examples", True),
        MetricSpec("flipped_noisy_rate", "share of mislabeled examples flipped within max_units", True),
        MetricSpec("flipped_clean_rate", "share of clean examples flipped within max_units", None),
        MetricSpec("collateral_drop_noisy", "mean drop in accuracy on other clean examples when a mislabeled "
                                            "example's units are zeroed", None),
        MetricSpec("collateral_drop_clean", "the same for a clean example's units", None),
    )
    records = {"index": "position in the training set", "noisy": "whether the label was flipped",
               "units_zeroed": "units zeroed to flip the prediction (null: not flipped within max_units)",
               "units": "the zeroed units, layer:unit, in the order chosen", "per_layer": "zeroed units per layer",
               "label": "the label trained on", "new_prediction": "the prediction with the units zeroed",
               "collateral_drop": "accuracy on other clean training examples: without minus with the units zeroed"}

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        p: FlippingParams = self.params  # type: ignore[assignment]
        model = context.model
        net, data = model.networks[network_of(model, p.network)], probe_data(model)
        seed = context.seed
        with TorchThreads(1):
            fitted = (predictions(net, data.x) == data.y).numpy()
            noisy = data.noisy.numpy()
            chosen = np.concatenate([first_rows(np.flatnonzero(fitted & noisy), p.examples_per_group, seed),
                                     first_rows(np.flatnonzero(fitted & ~noisy), p.examples_per_group, seed + 1)])
            rest = np.setdiff1d(np.arange(len(noisy)), chosen)
            ref = first_rows(rest, p.reference_size, seed + 2)
            others = first_rows(np.setdiff1d(rest[~noisy[rest]], ref), p.collateral_size, seed + 3)
            flips = greedy_flip(net, data.x[chosen], data.y[chosen], data.x[ref], data.y[ref], p.max_units)
            drops = collateral_drop(net, flips, data.x[others], data.y[others])
            new = [self._new_prediction(net, flips, data.x[chosen], row) for row in range(len(chosen))]
        return [self._record(int(i), bool(noisy[i]), int(data.y[i]), flips, row, new[row], float(drops[row]))
                for row, i in enumerate(chosen)]

    @staticmethod
    def _new_prediction(net: nn.Module, flips: Flips, x: torch.Tensor, row: int) -> int:
        with torch.no_grad(), unit_masks(net, {n: m[row] for n, m in flips.masks.items()}):
            return int(net(x[row:row + 1]).argmax(1))

    @staticmethod
    def _record(index: int, noisy: bool, label: int, flips: Flips, row: int, new: int, drop: float) -> dict[str, Any]:
        named = [flips.unit_name(u) for u in flips.zeroed[row]]
        per_layer = {n: sum(u.rpartition(":")[0] == n for u in named) for n in flips.names}
        count = int(flips.count[row])
        return {"index": index, "noisy": noisy, "label": label, "units_zeroed": count if count >= 0 else None,
                "units": named, "per_layer": per_layer, "new_prediction": new, "collateral_drop": drop}

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": str(r["index"]), **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        p: FlippingParams = self.params  # type: ignore[assignment]
        noisy = np.array([r["noisy"] for r in records])
        counts = np.array([r["units_zeroed"] if r["units_zeroed"] is not None else p.max_units + 1 for r in records],
                          dtype=float)
        drops = np.array([r["collateral_drop"] for r in records])
        flipped = np.array([r["units_zeroed"] is not None for r in records])
        metrics = []
        for group, where in (("noisy", noisy), ("clean", ~noisy)):
            if where.any():
                metrics += [Metric(f"median_units_{group}", float(np.median(counts[where])), n=int(where.sum())),
                            Metric(f"flipped_{group}_rate", float(flipped[where].mean()), n=int(where.sum())),
                            Metric(f"collateral_drop_{group}", float(drops[where].mean()), n=int(where.sum()))]
        if noisy.any() and (~noisy).any():
            metrics.append(Metric("median_units_margin", float(np.median(counts[~noisy]) - np.median(counts[noisy]))))
            metrics.append(roc_metric("flip_count_auc", noisy, -counts, roc_auc, seed=context.seed))
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        rows = list(records)
        blocks: list[Any] = []
        series = []
        for group, want in (("mislabeled", True), ("clean", False)):
            counts = sorted(r["units_zeroed"] for r in rows if r["noisy"] is want and r["units_zeroed"] is not None)
            total = sum(r["noisy"] is want for r in rows)
            if total:
                series.append(Series(f"{group} ({total})", [float(c) for c in counts],
                                     [(k + 1) / total for k in range(len(counts))]))
        if series:
            blocks.append(LinePlot("Units zeroed to flip the prediction: cumulative share of examples", "units zeroed",
                                   "share of examples flipped", series, y_range=(0.0, 1.0), markers=True))
        for group, want in (("mislabeled", True), ("clean", False)):
            hist = histogram_of([r["units_zeroed"] for r in rows if r["noisy"] is want],
                                f"Units zeroed to flip a {group} example", "units zeroed", bins=20)
            if hist is not None:
                blocks.append(hist)
        blocks.append(layer_table(rows))
        return [Section("Neuron flipping", blocks)]


def layer_table(rows: list[dict[str, Any]]) -> Table:
    """Per layer: the share of all zeroed units that sat in it, for flipped mislabeled and clean examples."""
    names = list(rows[0]["per_layer"]) if rows else []
    table = []
    for name in names:
        shares = []
        for want in (True, False):
            chosen = [r for r in rows if r["noisy"] is want and r["units_zeroed"]]
            total = sum(r["units_zeroed"] for r in chosen)
            shares.append(round(sum(r["per_layer"][name] for r in chosen) / total, 4) if total else None)
        table.append([name, *shares])
    return Table(["layer", "share of zeroed units (mislabeled)", "share of zeroed units (clean)"], table,
                 title="Where the flipping units sit")
