"""`mbi.search`: Optuna's default TPE sampler (a Bayesian optimizer) searches glimpse size, number of
glimpses and cluster counts for memorization-based inference, trading accuracy against table size."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from memeval.api import (
    Context,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    OptimizerParams,
    Params,
    Records,
    Section,
    Series,
    Table,
    TorchThreads,
    TrainData,
    TrainJob,
    UsageError,
    rate_metric,
)
from memeval_plugins.mbi.ram import RamTrainer, ram
from memeval_plugins.mbi.tables import build_tables, lookup_inference


class SearchParams(Params):
    trials: int = Field(12, ge=1, le=500, description="Optuna trials")
    glimpse: list[int] = Field(
        default_factory=lambda: [3, 4], min_length=1, description="glimpse sizes to try"
    )
    glimpses: tuple[int, int] = Field((2, 5), description="range of the number of glimpses")
    hidden_clusters: tuple[int, int] = Field(
        (4, 128), description="range of hidden clusters (log scale)"
    )
    patch_clusters: tuple[int, int] = Field((4, 128), description="range of patch keys (log scale)")
    epochs: int | None = Field(
        None, ge=1, description="epochs of each trial's RAM; none: the model's recipe"
    )
    levels: int = Field(
        1, ge=1, le=64, description="bits per pixel of the patch keys (thermometer code)"
    )
    train_limit: int | None = Field(
        None, ge=10, description="search on the first N training examples only (none: all of them)"
    )
    validation: float = Field(
        0.2, gt=0, lt=1, description="share of the training set held out to score trials"
    )
    size_weight: float = Field(
        0.02, ge=0, description="objective = validation accuracy - size_weight x log2(bytes)"
    )

    @model_validator(mode="after")
    def _ranges(self) -> SearchParams:
        for name in ("glimpses", "hidden_clusters", "patch_clusters"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(
                    f"{name} must be [low, high] with 1 <= low <= high, got {[low, high]}"
                )
        if any(g < 1 or g * g * self.levels > 64 for g in self.glimpse):
            raise ValueError(
                f"glimpse sizes must be >= 1 with glimpse^2 x levels <= 64 (lookup keys are at most "
                f"64 bits), got {self.glimpse} with levels {self.levels}"
            )
        return self


class LookupSearch(Method):
    """Bayesian optimization (Optuna TPE, seeded) of the MBI settings of a RAM classifier.

    Each trial trains a RAM like the suite's model (its source, architecture settings and optimizer)
    with the trial's glimpse size and number of glimpses on the training set (its first
    `train_limit` examples, if set) less a held-out validation share, builds its tables with the
    trial's cluster counts, and scores validation accuracy - `size_weight` x log2(table bytes).
    RAMs are kept across trials with the same glimpse settings. Records: one per trial (its
    settings, validation and test accuracy of lookup inference and of the RAM, table entries and
    bytes, lookups). Metrics: the best trial's."""

    name = "mbi.search"
    summary = "Optuna (TPE) search of glimpse size, glimpses and cluster counts: MBI accuracy against table size"
    Params = SearchParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("best_objective", "the best trial's objective", None),
        MetricSpec(
            "best_test_accuracy", "test accuracy of the best trial's lookup inference", None
        ),
        MetricSpec("best_table_bytes", "table bytes of the best trial", None),
        MetricSpec(
            "pareto_trials",
            "trials on the accuracy / table-size Pareto front (validation accuracy)",
            None,
        ),
    )
    records = {
        "trial": "Optuna trial number",
        "glimpse": "glimpse size",
        "glimpses": "number of glimpses",
        "hidden_clusters": "hidden clusters",
        "patch_clusters": "patch keys",
        "objective": "the objective",
        "val_accuracy": "validation accuracy (MBI)",
        "test_correct": "test examples right (MBI)",
        "test_total": "test examples",
        "test_accuracy": "test accuracy (MBI)",
        "ram_test_accuracy": "test accuracy of the trial's RAM",
        "entries": "table entries",
        "bytes": "table bytes",
        "lookups": "lookups per inference",
        "pareto": "on the Pareto front",
    }

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        import optuna

        params: SearchParams = context.params
        recipe = context.model.summary_info.get("params", {})
        architecture = recipe.get("architecture", {})
        if not str(architecture.get("factory", "")).endswith("mbi.ram:ram"):
            raise UsageError(
                "mbi.search needs a classifier with the RAM architecture "
                "(factory memeval_plugins.mbi.ram:ram)",
                field="model",
            )
        data = context.model.data()
        if params.train_limit is not None:
            data = replace(
                data,
                x_train=data.x_train[: params.train_limit],
                y_train=data.y_train[: params.train_limit],
            )
        cut = int(round(len(data.y_train) * (1 - params.validation)))
        optimizer = OptimizerParams(
            **{
                **recipe.get("optimizer", {}),
                **({"epochs": params.epochs} if params.epochs else {}),
            }
        )
        trained: dict[tuple[int, int], Any] = {}

        def objective(trial: Any) -> float:
            glimpse = trial.suggest_categorical("glimpse", params.glimpse)
            glimpses = trial.suggest_int("glimpses", *params.glimpses)
            hidden = trial.suggest_int("hidden_clusters", *params.hidden_clusters, log=True)
            patches = trial.suggest_int("patch_clusters", *params.patch_clusters, log=True)
            if (glimpse, glimpses) not in trained:
                kwargs = {
                    **architecture.get("kwargs", {}),
                    "glimpse": glimpse,
                    "glimpses": glimpses,
                }
                trained[glimpse, glimpses] = _train(
                    data, cut, kwargs, optimizer, context.seed, recipe.get("threads", 1)
                )
            net = trained[glimpse, glimpses]
            tables = build_tables(
                net, data.x_train[:cut], hidden, patches, seed=context.seed, levels=params.levels
            )
            val_pred, _ = lookup_inference(tables, data.x_train[cut:])
            test_pred, counts = lookup_inference(tables, data.x_test)
            val = float((val_pred == data.y_train[cut:]).mean())
            with torch.inference_mode():
                ram_pred = (
                    net(torch.tensor(np.asarray(data.x_test, dtype=np.float32))).argmax(1).numpy()
                )
            trial.set_user_attr(
                "row",
                {
                    "val_accuracy": val,
                    "test_correct": int((test_pred == data.y_test).sum()),
                    "test_total": len(test_pred),
                    "test_accuracy": float((test_pred == data.y_test).mean()),
                    "ram_test_accuracy": float((ram_pred == data.y_test).mean()),
                    "entries": tables.entries,
                    "bytes": tables.bytes,
                    "lookups": counts.per_inference()["lookups"],
                },
            )
            return val - params.size_weight * math.log2(tables.bytes)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=context.seed)
        )
        study.optimize(objective, n_trials=params.trials)
        rows = [
            {
                "id": f"trial-{t.number}",
                "trial": t.number,
                **t.params,
                "objective": t.value,
                **t.user_attrs["row"],
            }
            for t in study.trials
        ]
        front = pareto(rows)
        return [{**r, "pareto": r["trial"] in front} for r in rows]

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return batch

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        best = max(records, key=lambda r: (r["objective"], -r["trial"]))
        context.artifact(
            "best_trial",
            {
                k: best[k]
                for k in ("trial", "glimpse", "glimpses", "hidden_clusters", "patch_clusters")
            },
        )
        return [
            Metric("best_objective", best["objective"]),
            rate_metric("best_test_accuracy", best["test_correct"], best["test_total"]),
            Metric("best_table_bytes", best["bytes"]),
            Metric("pareto_trials", sum(r["pareto"] for r in records)),
        ]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        rows = sorted(records, key=lambda r: r["bytes"])
        if not rows:
            return []
        front = [r for r in rows if r["pareto"]]
        series = [
            Series(
                "trials (validation)",
                [float(r["bytes"]) for r in rows],
                [r["val_accuracy"] for r in rows],
            ),
            Series(
                "Pareto front (test)",
                [float(r["bytes"]) for r in front],
                [r["test_accuracy"] for r in front],
            ),
        ]
        table = Table(
            [
                "trial",
                "glimpse",
                "glimpses",
                "hidden",
                "patches",
                "bytes",
                "lookups",
                "validation acc.",
                "test acc.",
                "RAM test acc.",
                "objective",
            ],
            [
                [
                    r["trial"],
                    r["glimpse"],
                    r["glimpses"],
                    r["hidden_clusters"],
                    r["patch_clusters"],
                    r["bytes"],
                    round(r["lookups"], 1),
                    round(r["val_accuracy"], 4),
                    round(r["test_accuracy"], 4),
                    round(r["ram_test_accuracy"], 4),
                    round(r["objective"], 4),
                ]
                for r in rows
            ],
            title="Optuna trials (TPE), by table size",
        )
        return [
            Section(
                "MBI settings search",
                [
                    LinePlot(
                        "Search: accuracy against table size",
                        "table bytes",
                        "accuracy",
                        series,
                        y_range=(0.0, 1.0),
                        markers=True,
                        log_x=True,
                    ),
                    table,
                ],
            )
        ]


def pareto(rows: list[dict[str, Any]]) -> set[int]:
    """Trials no other trial beats on both validation accuracy (higher) and bytes (lower)."""
    return {
        r["trial"]
        for r in rows
        if not any(
            o["val_accuracy"] >= r["val_accuracy"]
            and o["bytes"] <= r["bytes"]
            and (o["val_accuracy"] > r["val_accuracy"] or o["bytes"] < r["bytes"])
            for o in rows
        )
    }


def _train(
    data: Any, cut: int, kwargs: dict[str, Any], optimizer: OptimizerParams, seed: int, threads: int
) -> Any:
    tensors = TrainData(
        torch.tensor(data.x_train[:cut]),
        torch.tensor(data.y_train[:cut]),
        torch.tensor(data.x_test[:1]),
        data.num_classes,
    )
    job = TrainJob(
        lambda: ram(data.input_shape, data.num_classes, **kwargs), tensors, optimizer, seed
    )
    with TorchThreads(threads):
        return RamTrainer().train(job).networks["net"]
