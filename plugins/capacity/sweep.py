"""`capacity.ntk`: the smallest eigenvalue of the empirical NTK over a grid of widths and sample
counts, and random-label memorization over the same grid (Bombari et al. 2022)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator

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
    mean_metric,
)
from memeval_plugins.capacity.memorization import FitParams, fit_random_labels, random_labels
from memeval_plugins.capacity.networks import DeepFC, NetworkParams, build_network, sphere
from memeval_plugins.capacity.ntk import ntk_gram

PLOT_FLOOR = 1e-16  # normalized eigenvalues below it (rounding of an exact zero) are drawn at it


class NTKParams(Params):
    architecture: NetworkParams = Field(default_factory=DeepFC, description="the network, built at each width")
    widths: list[int] = Field(default_factory=lambda: [2, 4, 8, 16, 32], min_length=1,
                              description="hidden widths swept (deep-fc and mlp: every hidden layer; cnn: its "
                                          "fully connected layer; factory: the `width_param` keyword)")
    samples: list[int] = Field(default_factory=lambda: [64, 128], min_length=1, description="sample counts N swept")
    input_shape: list[int] = Field(default_factory=lambda: [16], min_length=1,
                                   description="shape of one input; inputs are uniform on the sphere of radius "
                                               "sqrt(d)")
    block: str = Field("full", description="'full' (every parameter), or the layer (e.g. fc2) or parameter "
                                           "whose block of the NTK to take")
    width_param: str = Field("width", description="keyword a factory receives the width as")
    repeats: int = Field(1, ge=1, description="independent draws (inputs, initialisation, labels) per cell")
    random_labels: FitParams | None = Field(default_factory=FitParams,
                                            description="fit N random ±1 labels per cell; null: skip")
    tolerance: float = Field(1e-8, gt=0, description="normalized smallest eigenvalue above which K counts "
                                                     "as full rank")
    jacobian_memory_mb: int = Field(256, ge=1, description="per-sample Jacobian rows held at once where no "
                                                           "closed form applies (more: recomputed in blocks)")
    threads: int = Field(1, ge=1, description="torch CPU threads")

    @field_validator("widths", "samples")
    @classmethod
    def _positive_increasing(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError(f"expected positive, strictly increasing integers, got {values}")
        return values


@dataclass(frozen=True)
class Cell:
    n: int
    width: int
    repeat: int


class NTKCapacity(Method):
    """Memorization capacity and the NTK at minimum over-parameterization (Bombari et al. 2022).

    For every N in `samples`, width in `widths` and repeat: N inputs uniform on the sphere, a freshly
    initialised network (float64), and the Gram matrix K = J Jᵀ of its scalar output's gradients
    over the chosen parameters (`block`), computed in closed form for linear layers and from
    per-sample Jacobian blocks otherwise. Its smallest eigenvalue, normalized by the mean eigenvalue
    (tr K / N), is exactly 0 when the block has fewer parameters than N (rank); the paper shows it
    bounded away from 0 once parameters exceed N. The same network then fits N random ±1 labels
    (squared loss), and its final training loss is recorded. Metrics summarise the cells by their
    parameter-to-sample ratio P/N. Needs no model and no dataset.
    """

    name = "capacity.ntk"
    summary = "smallest NTK eigenvalue and random-label fit across width and N: the transition at parameters ≈ N"
    Params = NTKParams
    needs_dataset = False
    metrics = (
        MetricSpec("lambda_min_under", "largest normalized smallest NTK eigenvalue among cells with P < N "
                                       "(0 up to rounding)", None),
        MetricSpec("lambda_min_over", "smallest normalized smallest NTK eigenvalue among cells with P >= 2N", None),
        MetricSpec("transition_ratio", "smallest P/N from which every cell of the grid has a full-rank K", None),
        MetricSpec("random_label_loss_under", "mean final training loss on random labels, cells whose network has "
                                              "fewer parameters than N", None),
        MetricSpec("random_label_loss_over", "mean final training loss on random labels, cells whose network has "
                                             "at least 2N parameters", None),
    )
    records = {"n": "samples N", "width": "hidden width", "repeat": "draw", "parameters": "parameters in the block",
               "total_parameters": "parameters of the network", "ratio": "parameters (of the block) / N",
               "total_ratio": "parameters of the network / N (what random-label fitting is compared by)",
               "lambda_min": "smallest eigenvalue of K", "lambda_max": "largest eigenvalue of K",
               "mean_eigenvalue": "tr K / N", "lambda_min_normalized": "lambda_min / mean_eigenvalue",
               "rank": "eigenvalues above tolerance x mean_eigenvalue", "full_rank": "normalized lambda_min > tolerance",
               "kernel": "closed-form or jacobian", "random_label_loss": "final training loss on random labels",
               "random_label_fit": "share of random labels fitted (sign)", "seconds": "time for the cell"}

    @classmethod
    def produced_metrics(cls, params: NTKParams) -> list[str]:
        return [m for m in cls.metric_names() if params.random_labels is not None or "random_label" not in m]

    def prepare(self, samples: Any, context: Context) -> list[Cell]:
        p = self.params
        return [Cell(n, width, repeat) for repeat in range(p.repeats) for n in p.samples for width in p.widths]

    def map(self, batch: list[Cell], context: Context) -> list[dict[str, Any]]:
        with TorchThreads(self.params.threads):
            return [self._measure(cell, context.seed) for cell in batch]

    def _measure(self, cell: Cell, seed: int) -> dict[str, Any]:
        p = self.params
        start = time.perf_counter()
        shape = tuple(p.input_shape)
        # Inputs and labels depend on (N, repeat) only, so widths are compared on the same data.
        data_seed = _seed(seed, cell.repeat, cell.n)
        x = sphere(cell.n, shape, data_seed)
        model = build_network(p.architecture, cell.width, shape, p.width_param, _seed(seed, cell.repeat, cell.n,
                                                                                        cell.width))
        gram = ntk_gram(model, x, p.block, budget=p.jacobian_memory_mb * 2**20)
        eigenvalues = np.linalg.eigvalsh(gram.kernel.numpy())
        mean = float(eigenvalues.mean())
        total = sum(q.numel() for q in model.parameters())
        normalized = float(eigenvalues[0] / mean) if mean > 0 else 0.0
        record = {"id": f"N={cell.n},width={cell.width},r{cell.repeat}", "n": cell.n, "width": cell.width,
                  "repeat": cell.repeat, "parameters": gram.parameters,
                  "total_parameters": total, "ratio": gram.parameters / cell.n, "total_ratio": total / cell.n,
                  "lambda_min": float(eigenvalues[0]),
                  "lambda_max": float(eigenvalues[-1]), "mean_eigenvalue": mean,
                  "lambda_min_normalized": normalized,
                  "rank": int((eigenvalues > p.tolerance * mean).sum()),
                  "full_rank": normalized > p.tolerance, "kernel": gram.method}
        if p.random_labels is not None:
            fit = fit_random_labels(model, x, random_labels(cell.n, data_seed), p.random_labels)
            record |= {"random_label_loss": fit.loss, "random_label_fit": fit.fit_rate}
        record["seconds"] = round(time.perf_counter() - start, 4)
        return record

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        under = [r for r in records if r["ratio"] < 1]
        over = [r for r in records if r["ratio"] >= 2]
        for cells, what in ((under, "fewer parameters than N"), (over, "at least 2N parameters")):
            if not cells:
                context.warn(f"no cell of the grid has {what}: widen the sweep to see both sides of the transition")
        metrics = [Metric("lambda_min_under", max((r["lambda_min_normalized"] for r in under), default=float("nan")),
                          n=len(under)),
                   Metric("lambda_min_over", min((r["lambda_min_normalized"] for r in over), default=float("nan")),
                          n=len(over)),
                   Metric("transition_ratio", transition_ratio(records), n=len(records))]
        if self.params.random_labels is not None:
            # The whole network is trained, so its fit is compared by the whole network's parameters.
            losses = {side: [r["random_label_loss"] for r in records if test(r["total_ratio"])]
                      for side, test in (("under", lambda x: x < 1), ("over", lambda x: x >= 2))}
            metrics += [mean_metric(f"random_label_loss_{side}", values, seed=context.seed)
                        for side, values in losses.items()]
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        rows = list(records)
        by_n: dict[int, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: (r["n"], r["ratio"], r["repeat"])):
            by_n.setdefault(r["n"], []).append(r)
        blocks: list[Any] = [
            LinePlot("Smallest NTK eigenvalue / mean eigenvalue against parameters / N "
                     f"(exact zeros drawn at {PLOT_FLOOR:g})", "parameters / N", "normalized smallest eigenvalue",
                     [Series(f"N = {n}", [r["ratio"] for r in cells],
                             [max(r["lambda_min_normalized"], PLOT_FLOOR) for r in cells]) for n, cells in by_n.items()],
                     markers=True, log_x=True, log_y=True),
            LinePlot("Smallest NTK eigenvalue against width", "width", "smallest eigenvalue of K",
                     [Series(f"N = {n}", [r["width"] for r in sorted(cells, key=lambda r: r["width"])],
                             [r["lambda_min"] for r in sorted(cells, key=lambda r: r["width"])])
                      for n, cells in by_n.items()], markers=True, log_x=True)]
        if rows and "random_label_loss" in rows[0]:
            blocks.append(LinePlot("Random-label memorization: final training loss against the network's parameters / N",
                                   "network parameters / N", "training loss (½ squared error)",
                                   [Series(f"N = {n}", [r["total_ratio"] for r in cells],
                                           [r["random_label_loss"] for r in cells]) for n, cells in by_n.items()],
                                   markers=True, log_x=True))
        table = []
        for n, cells in by_n.items():
            full = [r for r in cells if r["full_rank"]]
            first = min(full, key=lambda r: r["parameters"]) if full else None
            table.append([n, first["width"] if first else None, first["parameters"] if first else None,
                          round(first["ratio"], 3) if first else None])
        blocks.append(Table(["N", "smallest full-rank width", "its parameters", "parameters / N"], table,
                            title="Where K becomes full rank"))
        return [Section("NTK and memorization capacity", blocks)]


def transition_ratio(records: list[dict[str, Any]]) -> float:
    """The smallest P/N from which on every cell is full rank (NaN: the largest is not)."""
    ordered = sorted(records, key=lambda r: r["ratio"])
    ratio = float("nan")
    for r in reversed(ordered):
        if not r["full_rank"]:
            break
        ratio = r["ratio"]
    return ratio


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
