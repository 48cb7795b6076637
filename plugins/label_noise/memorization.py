"""`label_noise.memorization`: how much of the injected label noise a trained classifier memorized."""

from __future__ import annotations

from typing import Any

import numpy as np

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
    histogram_of,
    rate_metric,
    training_curves,
    training_final_counts,
    training_records,
)

CURVES = ("clean_test_accuracy", "memorization_rate", "clean_train_fit", "label_correction_accuracy")


class MemorizationParams(Params):
    """No settings: everything comes from the trained classifier's recipe and training log."""


class LabelNoiseMemorization(Method):
    """Memorization of noisy labels by a `classifier` model trained under injected label noise.

    The clean labels were kept aside when the noise was injected and never reached the trainer;
    here they measure what the trained model learned and what it memorized:
    - `clean_test_accuracy`: the trained model's accuracy on the clean test labels;
    - `memorization_rate`: among the training examples whose label was flipped, the share the
      model predicts as its noisy label (memorized noise; chance is about 1 / classes);
    - `clean_train_fit`: among the unflipped training examples, the share predicted correctly;
    - `label_correction_accuracy` (trainers that correct labels, e.g. CrossSplit): the share of
      training examples whose last corrected label (argmax of the soft label) is the clean one;
      `noisy_label_correction_accuracy` the same over the flipped examples only.
    Each is a rate with a Clopper-Pearson CI. The same four per epoch, from the training log, go
    into the artifact `curves` and the report. Records: one per training example (clean and noisy
    label, final prediction, first epoch predicted as the noisy label).
    """

    name = "label_noise.memorization"
    summary = "clean test accuracy, memorization of noisy labels, clean fit and label correction of a classifier"
    Params = MemorizationParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("clean_test_accuracy", "accuracy on the clean test labels", None),
        MetricSpec("memorization_rate", "share of noisy training examples predicted as their noisy label", True),
        MetricSpec("clean_train_fit", "share of clean training examples predicted as their label", None),
        MetricSpec("label_correction_accuracy", "share of training examples whose corrected label is the clean "
                                                "one (trainers that correct labels)", None),
        MetricSpec("noisy_label_correction_accuracy", "the same over the noisy training examples only", None),
        MetricSpec("noise_rate", "share of training labels flipped by the injected noise", None),
    )
    records = {"index": "position in the training set", "clean_label": "the true label (never trained on)",
               "noisy_label": "the label the trainer saw", "noisy": "whether the label was flipped",
               "final_prediction": "the trained model's prediction",
               "predicts_noisy_label": "final prediction equals the noisy label",
               "first_epoch_noisy_label": "first epoch (1-based) predicted as the noisy label; null: never",
               "corrected_label": "last corrected label (trainers that correct labels)"}

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        model = context.model
        return training_records(model.training_log, model.labels)

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": str(r["index"]), **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        model = context.model
        counts = training_final_counts(model.training_log, model.labels)
        metrics = [rate_metric(name, hits, total) for name, (hits, total) in counts.items() if total > 0]
        noisy = sum(r["noisy"] for r in records)
        metrics.append(Metric("noise_rate", noisy / len(records), n=len(records)))
        context.artifact("curves", training_curves(model.training_log, model.labels).as_dict())
        context.artifact("training", {k: model.summary_info.get(k) for k in ("key", "trainer", "seed", "seconds",
                                                                             "noise") if k in model.summary_info})
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        found = evaluation.artifacts.get("curves", {})
        epochs = found.get("epochs", [])
        series = [_series(name, epochs, found[name]) for name in CURVES if name in found]
        series = [s for s in series if s.x]
        blocks: list[Any] = []
        if epochs and series:
            blocks.append(LinePlot("Over training: fit, memorization of noisy labels, test accuracy", "epoch",
                                   "share", series, y_range=(0.0, 1.0), markers=len(epochs) <= 30))
        first = [r["first_epoch_noisy_label"] for r in records if r["noisy"]]
        memorized = [e for e in first if e is not None]
        blocks.append(histogram_of(memorized, "When noisy labels were first predicted (noisy examples)",
                                   "epoch first predicted as the noisy label", bins=min(20, max(1, len(epochs)))))
        blocks.append(Table(["noisy examples", "ever predicted as their noisy label", "at the end"],
                            [[len(first), len(memorized), sum(r["predicts_noisy_label"] for r in records if r["noisy"])]],
                            title="Noisy labels memorized"))
        return [Section("Label noise", [b for b in blocks if b is not None])]


def _series(name: str, epochs: list[int], values: list[float | None]) -> Series:
    """Epochs without that measurement (e.g. label correction during warm-up) are left out."""
    points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None and np.isfinite(v)]
    return Series(name.replace("_", " "), [float(e) for e, _ in points], [float(v) for _, v in points])
