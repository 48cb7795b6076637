"""`precog.score`: PreCog@k of each downstream example under a pre-trained masked LM, and how it
relates to a downstream model's correctness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from memeval.api import (
    Context,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Sample,
    Section,
    Series,
    Strict,
    Table,
    UsageError,
    cross_validated_scores,
    histogram_of,
    mean_metric,
    rate_metric,
    stratified_folds,
)
from memeval_plugins.precog.analysis import bucket_accuracy, spearman_ci


class FineTuneParams(Strict):
    epochs: int = Field(20, ge=1, description="passes over the training folds")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate")


class PreCogParams(Params):
    k: int = Field(1, ge=1, description="the k of PreCog@k that buckets and correlations use")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1,
                          description="every k reported (one forward pass per token serves them all)")
    buckets: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
                                 description="PreCog bucket edges for accuracy per bucket, from 0 to 1")
    correct_field: str | None = Field(None, description="dataset field saying whether the fine-tuned model got "
                                                        "the example right (true/false or 1/0)")
    label_field: str | None = Field(None, description="instead: a binary label field; correctness is then that "
                                                      "of a cross-validated logistic-regression probe on the "
                                                      "masked LM's mean-pooled features, or with `fine_tune` of "
                                                      "the masked LM fine-tuned as a classifier (out of fold)")
    fine_tune: FineTuneParams | None = Field(None, description="with label_field: fine-tune a copy of the masked "
                                                               "LM per fold instead of fitting a probe")
    folds: int = Field(5, ge=2, description="with label_field: cross-validation folds")
    group_field: str | None = Field(None, description="dataset field to average PreCog by (e.g. exposure)")

    @field_validator("ks")
    @classmethod
    def _increasing(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks) or any(b <= a for a, b in zip(ks, ks[1:], strict=False)):
            raise ValueError(f"expected positive, strictly increasing integers, got {ks}")
        return ks

    @field_validator("buckets")
    @classmethod
    def _edges(cls, edges: list[float]) -> list[float]:
        if len(edges) < 2 or edges[0] != 0 or edges[-1] != 1 or any(b <= a for a, b in zip(edges, edges[1:],
                                                                                                 strict=False)):
            raise ValueError(f"expected increasing edges from 0 to 1, got {edges}")
        return edges

    @model_validator(mode="after")
    def _one_correctness(self) -> PreCogParams:
        if self.correct_field and self.label_field:
            raise ValueError("set at most one of correct_field and label_field")
        if self.fine_tune and not self.label_field:
            raise ValueError("fine_tune needs label_field (the labels to fine-tune on)")
        return self


@dataclass
class Unit:
    sample: Sample
    ids: list[int]
    positions: list[int]
    correct: bool | None
    group: Any


class PreCog(Method):
    """PreCog (Ranaldi et al. 2023): the share of a downstream example's tokens that a pre-trained
    masked LM recovers when each is masked on its own. For every non-special token of the example
    one forward pass is run with that token masked; PreCog@k is the share whose true token ranks in
    the top k (the rank counts the vocabulary tokens scoring strictly higher). Then, with the
    downstream model's correctness (a dataset field; or, from a binary label, the out-of-fold
    predictions of the masked LM fine-tuned as a classifier, or of a linear probe on its features), accuracy per PreCog bucket (Clopper-Pearson CIs) and Spearman's
    correlation between PreCog@k and correctness (bootstrap CI).
    """

    name = "precog.score"
    summary = "PreCog@k: share of an example's tokens a masked LM recovers; accuracy per PreCog bucket"
    Params = PreCogParams
    requires = frozenset({"masked"})
    metrics = (
        MetricSpec("precog_mean", "mean PreCog@k over the examples", True, per_sample="precog"),
        MetricSpec("accuracy", "share of examples the downstream model gets right", None),
        MetricSpec("spearman", "Spearman correlation between PreCog@k and correctness", None),
        MetricSpec("accuracy_low_precog", "accuracy in the lowest non-empty PreCog bucket", None),
        MetricSpec("accuracy_high_precog", "accuracy in the highest non-empty PreCog bucket", None),
    )
    records = {"tokens": "tokens scored (one forward pass each)", "precog": "PreCog@k at the chosen k",
               "precog_at": "PreCog@k for every k of `ks`", "ranks": "rank of each true token when masked",
               "correct": "whether the downstream model gets it right (null: unknown)", "group": "group_field's value"}

    @classmethod
    def produced_metrics(cls, params: PreCogParams) -> list[str]:
        return ["precog_mean"] + ([m for m in cls.metric_names() if m != "precog_mean"]
                                  if params.correct_field or params.label_field else [])

    def prepare(self, samples: list[Sample], context: Context) -> list[Unit]:
        model = context.model
        texts = [_text(s) for s in samples]
        encoded = model.tokenize(texts)
        limit = model.max_length
        cut = [len(ids) - limit for ids in encoded if limit and len(ids) > limit]
        if cut:
            context.truncated(len(cut), len(encoded), f"examples cut to the model's {limit} positions "
                                                      f"(by up to {max(cut)} tokens)")
            encoded = [ids[:limit] for ids in encoded]
        correct = self._correctness(samples, context)
        group = self.params.group_field
        self.forward_passes = 0
        return [Unit(s, ids, [i for i, special in enumerate(model.special_mask(ids)) if not special], c,
                     s.meta.get(group) if group else None)
                for s, ids, c in zip(samples, encoded, correct, strict=True)]

    def _correctness(self, samples: list[Sample], context: Context) -> list[bool | None]:
        p = self.params
        if p.correct_field:
            return [_flag(_field(s, p.correct_field), p.correct_field, s.id) for s in samples]
        if not p.label_field:
            return [None] * len(samples)
        labels = [_field(s, p.label_field) for s in samples]
        values = sorted(set(map(str, labels)))
        if len(values) != 2:
            raise UsageError(f"label_field {p.label_field!r}: the probe needs exactly two labels, found "
                             f"{len(values)} ({', '.join(values[:5])})")
        positive = np.array([str(v) == values[1] for v in labels])
        texts = [_text(s) for s in samples]
        if p.fine_tune:
            folds = stratified_folds(positive, p.folds, seed=context.seed)
            predicted = context.model.fine_tuned_predictions(texts, positive, folds, p.fine_tune.epochs,
                                                             p.fine_tune.learning_rate, context.seed)
        else:
            scores = cross_validated_scores(context.model.features(texts), positive, n_folds=p.folds,
                                            seed=context.seed)
            predicted = scores > 0
        return [bool(v) for v in predicted == positive]

    def size(self, unit: Unit) -> int:
        return len(unit.ids)

    def map(self, batch: list[Unit], context: Context) -> list[dict[str, Any]]:
        counter = context.model.counter
        before = counter.rows
        ranks = context.model.masked_ranks([u.ids for u in batch], [u.positions for u in batch])
        self.forward_passes += counter.rows - before
        out = []
        for unit, rank in zip(batch, ranks, strict=True):
            at = {str(k): float(np.mean(rank < k)) if rank.size else None for k in self.params.ks}
            out.append({"id": unit.sample.id, "tokens": int(rank.size), "ranks": rank.tolist(),
                        "precog": float(np.mean(rank < self.params.k)) if rank.size else None, "precog_at": at,
                        "correct": unit.correct, "group": unit.group})
        return out

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        scored = [r for r in records if r["precog"] is not None]
        if len(scored) < len(records):
            context.warn(f"{len(records) - len(scored)} examples have no token to mask and are left out")
        metrics = [mean_metric("precog_mean", [r["precog"] for r in scored], seed=context.seed)]
        # Counted by the model: one row per masked token computed (0 for tokens the cache had).
        context.artifact("forward_passes", self.forward_passes)
        context.artifact("precog_at_k", {str(k): float(np.mean([r["precog_at"][str(k)] for r in scored]))
                                         for k in self.params.ks})
        if self.params.group_field:
            context.artifact("by_group", group_means(scored, self.params.ks))
        judged = [r for r in scored if r["correct"] is not None]
        if judged:
            precog, correct = [r["precog"] for r in judged], [bool(r["correct"]) for r in judged]
            metrics.append(rate_metric("accuracy", sum(correct), len(correct)))
            rho, low, high = spearman_ci(precog, correct, seed=context.seed)
            metrics.append(Metric("spearman", rho, ci_low=low, ci_high=high, ci_level=0.95,
                                  ci_method="bootstrap-percentile(pairs)", n=len(judged)))
            buckets = bucket_accuracy(precog, correct, self.params.buckets)
            context.artifact("buckets", buckets)
            filled = [b for b in buckets if b["n"]]
            for name, bucket in (("accuracy_low_precog", filled[0]), ("accuracy_high_precog", filled[-1])):
                metrics.append(rate_metric(name, int(bucket["correct"]), int(bucket["n"])))
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        a = evaluation.artifacts
        blocks: list[Any] = []
        series = [Series("all examples", [float(k) for k in a.get("precog_at_k", {})],
                         list(a.get("precog_at_k", {}).values()))]
        for group, values in a.get("by_group", {}).items():
            series.append(Series(f"group {group}", [float(k) for k in values["precog_at"]],
                                 list(values["precog_at"].values())))
        if series[0].x:
            blocks.append(LinePlot("Mean PreCog@k against k", "k", "mean PreCog@k", series, y_range=(0.0, 1.0),
                                   markers=True, log_x=True))
        blocks.append(histogram_of([r["precog"] for r in records], "PreCog of the examples", "PreCog@k", bins=10,
                                   value_range=(0.0, 1.0)))
        if a.get("by_group"):
            blocks.append(Table(["group", "examples", "mean PreCog@k"],
                                [[g, v["n"], round(v["precog"], 4)] for g, v in a["by_group"].items()],
                                title="PreCog by group"))
        if a.get("buckets"):
            rows = [[f"[{b['low']:g}, {b['high']:g}{']' if b['high'] == 1 else ')'}", b["n"],
                     None if b["accuracy"] is None else round(b["accuracy"], 4),
                     None if b["ci_low"] is None else f"[{b['ci_low']:.3f}, {b['ci_high']:.3f}]"]
                    for b in a["buckets"]]
            blocks.append(Table(["PreCog bucket", "examples", "accuracy", "95% CI"], rows,
                                title="Downstream accuracy per PreCog bucket"))
        return [Section("PreCog", [b for b in blocks if b is not None])]


def group_means(records: list[dict[str, Any]], ks: list[int]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["group"]), []).append(r)
    return {g: {"n": len(rows), "precog": float(np.mean([r["precog"] for r in rows])),
                "precog_at": {str(k): float(np.mean([r["precog_at"][str(k)] for r in rows])) for k in ks}}
            for g, rows in sorted(groups.items(), key=lambda item: _sort_key(item[0]))}


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return 0, float(value)
    except ValueError:
        return 1, value


def _text(sample: Sample) -> str:
    text = sample.full_text
    if text is None:
        raise UsageError(f"sample {sample.id!r} has no text (precog scores text examples)")
    return text


def _field(sample: Sample, name: str) -> Any:
    if name not in sample.meta:
        raise UsageError(f"sample {sample.id!r} has no field {name!r} (fields: {', '.join(sample.meta) or 'none'})")
    return sample.meta[name]


def _flag(value: Any, name: str, sample_id: str) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise UsageError(f"sample {sample_id!r}: {name} must be true/false or 1/0, got {value!r}")
