"""Label-noise measurements from a stored training log and labels (what `label_noise.memorization`
reports; pure numpy, so the method is a thin wrapper).

Per epoch (from the training log) and for the trained model (from its final eval-mode predictions):

- `clean_test_accuracy`: test predictions against the clean test labels;
- `memorization_rate`: among training examples whose label was flipped, the share predicted as
  their noisy label;
- `clean_train_fit`: among the unflipped training examples, the share predicted as their (clean)
  label;
- `label_correction_accuracy` (trainers that correct labels, i.e. log `corrected`): the share of
  training examples whose corrected label (argmax of the soft label) is the clean label, over the
  examples corrected that epoch (NaN in epochs without correction, e.g. CrossSplit's warm-up);
  `noisy_label_correction_accuracy` the same over the flipped examples only.

Records: one per training example: index, clean and noisy label, whether it was flipped, the final
prediction, whether that prediction is the noisy label, and the first epoch (1-based) whose logged
prediction was the noisy label (None if never), plus the final corrected label where there is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from memeval.train.trainers import TrainingLog


@dataclass(frozen=True)
class LabelSet:
    clean: np.ndarray
    noisy: np.ndarray
    mask: np.ndarray
    test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"clean": self.clean, "noisy": self.noisy, "mask": self.mask, "test": self.test}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LabelSet:
        return cls(np.asarray(arrays["clean"]), np.asarray(arrays["noisy"]), np.asarray(arrays["mask"], dtype=bool),
                   np.asarray(arrays["test"]))


@dataclass(frozen=True)
class Curves:
    """Metric series over epochs 1..E (NaN where undefined)."""

    epochs: np.ndarray
    clean_test_accuracy: np.ndarray
    memorization_rate: np.ndarray
    clean_train_fit: np.ndarray
    label_correction_accuracy: np.ndarray | None = None
    noisy_label_correction_accuracy: np.ndarray | None = None

    def as_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__
                if getattr(self, k) is not None}


def _share(hits: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Row-wise mean of `hits` over the columns in `where` (NaN when `where` is empty)."""
    count = where.sum(axis=-1)
    total = (hits & where).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def accuracies(pred: np.ndarray, test_pred: np.ndarray, labels: LabelSet) -> dict[str, np.ndarray]:
    """The three accuracies for predictions of shape (..., n) and (..., n_test)."""
    noisy, clean = labels.mask, ~labels.mask
    logged = test_pred >= 0  # -1: an epoch whose test predictions were not logged
    return {
        "clean_test_accuracy": _share(test_pred == labels.test, logged),
        "memorization_rate": _share(pred == labels.noisy, np.broadcast_to(noisy, pred.shape)),
        "clean_train_fit": _share(pred == labels.clean, np.broadcast_to(clean, pred.shape)),
    }


def correction_accuracy(corrected: np.ndarray, labels: LabelSet) -> tuple[np.ndarray, np.ndarray]:
    """Per row: accuracy of the corrected labels (-1: not corrected) overall and on flipped examples."""
    done = corrected >= 0
    right = corrected == labels.clean
    return _share(right, done), _share(right, done & labels.mask)


def curves(log: TrainingLog, labels: LabelSet) -> Curves:
    acc = accuracies(log.pred, log.test_pred, labels)
    correction: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if "corrected" in log.extras:
        correction = correction_accuracy(log.extras["corrected"], labels)
    return Curves(np.arange(1, log.epochs + 1), *(np.asarray(acc[k], dtype=float) for k in
                                                  ("clean_test_accuracy", "memorization_rate", "clean_train_fit")),
                  *correction)


def final_predictions(log: TrainingLog) -> tuple[np.ndarray, np.ndarray]:
    """The trained model's predictions (the last logged epoch when the log has no final ones)."""
    pred = log.final_pred if log.final_pred is not None else log.pred[-1]
    test = log.final_test_pred if log.final_test_pred is not None else log.test_pred[-1]
    return pred, test


def last_corrected(log: TrainingLog) -> np.ndarray | None:
    """Each example's most recent corrected label (-1 if it never had one)."""
    corrected = log.extras.get("corrected")
    if corrected is None:
        return None
    done = corrected >= 0
    if not done.any():
        return np.full(corrected.shape[1], -1)
    last_row = np.where(done.any(axis=0), corrected.shape[0] - 1 - np.argmax(done[::-1], axis=0), 0)
    return np.where(done.any(axis=0), corrected[last_row, np.arange(corrected.shape[1])], -1)


def final_counts(log: TrainingLog, labels: LabelSet) -> dict[str, tuple[int, int]]:
    """(hits, total) behind each final rate of the trained model, for rates with exact CIs."""
    pred, test = final_predictions(log)
    noisy = labels.mask
    counts = {"clean_test_accuracy": (int((test == labels.test).sum()), int(test.size)),
              "memorization_rate": (int((pred[noisy] == labels.noisy[noisy]).sum()), int(noisy.sum())),
              "clean_train_fit": (int((pred[~noisy] == labels.clean[~noisy]).sum()), int((~noisy).sum()))}
    corrected = last_corrected(log)
    if corrected is not None:
        done, right = corrected >= 0, corrected == labels.clean
        counts["label_correction_accuracy"] = (int((right & done).sum()), int(done.sum()))
        counts["noisy_label_correction_accuracy"] = (int((right & done & noisy).sum()), int((done & noisy).sum()))
    return counts


def final_metrics(log: TrainingLog, labels: LabelSet) -> dict[str, float]:
    """The final rates (NaN where a rate has no examples)."""
    return {name: hits / total if total else float("nan") for name, (hits, total) in final_counts(log, labels).items()}


def first_epoch(hits: np.ndarray) -> np.ndarray:
    """Per column, the first row (1-based) where `hits` is true; 0 where never."""
    any_hit = hits.any(axis=0)
    return np.where(any_hit, np.argmax(hits, axis=0) + 1, 0)


def records(log: TrainingLog, labels: LabelSet) -> list[dict[str, Any]]:
    pred, _ = final_predictions(log)
    first = first_epoch(log.pred == labels.noisy)
    corrected = last_corrected(log)
    rows = []
    for i in range(len(labels.clean)):
        row: dict[str, Any] = {
            "index": i, "clean_label": int(labels.clean[i]), "noisy_label": int(labels.noisy[i]),
            "noisy": bool(labels.mask[i]), "final_prediction": int(pred[i]),
            "predicts_noisy_label": bool(pred[i] == labels.noisy[i]),
            "first_epoch_noisy_label": int(first[i]) or None,
        }
        if corrected is not None:
            row["corrected_label"] = int(corrected[i]) if corrected[i] >= 0 else None
        rows.append(row)
    return rows
