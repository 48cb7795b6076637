"""Label-noise measurements from a trained classifier's training log and labels (pure numpy).

The log (`memeval.api` `TrainingLog`) holds, per epoch and training example, the predicted class
(`pred`, -1 where not logged) and per epoch the test predictions (`test_pred`); trainers that
correct labels log the corrected class per epoch in `extras["corrected"]` (-1: not corrected that
epoch). `final_pred` / `final_test_pred` are the trained model's own (eval mode). The labels
(`LabelSet`) hold the clean and noisy training labels, the flipped mask and the clean test labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _share(hits: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Row-wise share of `hits` among the columns in `where` (NaN where `where` is empty)."""
    count = where.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (hits & where).sum(axis=-1) / np.maximum(count, 1), np.nan)


def _final(log: Any) -> tuple[np.ndarray, np.ndarray]:
    pred = log.final_pred if log.final_pred is not None else log.pred[-1]
    test = log.final_test_pred if log.final_test_pred is not None else log.test_pred[-1]
    return np.asarray(pred), np.asarray(test)


def last_corrected(log: Any) -> np.ndarray | None:
    """Each training example's most recent corrected label (-1 if it never had one)."""
    corrected = log.extras.get("corrected")
    if corrected is None:
        return None
    done = corrected >= 0
    ever = done.any(axis=0)
    last_row = corrected.shape[0] - 1 - np.argmax(done[::-1], axis=0)
    return np.where(ever, corrected[last_row, np.arange(corrected.shape[1])], -1)


def curves(log: Any, labels: Any) -> dict[str, list[float | None]]:
    """Per epoch: clean test accuracy, memorization rate, clean train fit and, for trainers that
    correct labels, label-correction accuracy (overall and on the noisy examples)."""
    pred, test_pred = np.asarray(log.pred), np.asarray(log.test_pred)
    noisy = np.broadcast_to(labels.mask, pred.shape)
    out = {"epochs": list(range(1, len(pred) + 1)),
           "clean_test_accuracy": _share(test_pred == labels.test, test_pred >= 0),
           "memorization_rate": _share(pred == labels.noisy, noisy & (pred >= 0)),
           "clean_train_fit": _share(pred == labels.clean, ~noisy & (pred >= 0))}
    corrected = log.extras.get("corrected")
    if corrected is not None:
        done, right = corrected >= 0, corrected == labels.clean
        out["label_correction_accuracy"] = _share(right, done)
        out["noisy_label_correction_accuracy"] = _share(right, done & labels.mask)
    return {k: v if k == "epochs" else [None if np.isnan(x) else float(x) for x in v] for k, v in out.items()}


def final_counts(log: Any, labels: Any) -> dict[str, tuple[int, int]]:
    """(hits, total) of each final rate, for the trained model."""
    pred, test = _final(log)
    noisy = labels.mask
    counts = {"clean_test_accuracy": (int((test == labels.test).sum()), len(test)),
              "memorization_rate": (int((pred[noisy] == labels.noisy[noisy]).sum()), int(noisy.sum())),
              "clean_train_fit": (int((pred[~noisy] == labels.clean[~noisy]).sum()), int((~noisy).sum()))}
    corrected = last_corrected(log)
    if corrected is not None:
        done = corrected >= 0
        right = corrected == labels.clean
        counts["label_correction_accuracy"] = (int((right & done).sum()), int(done.sum()))
        counts["noisy_label_correction_accuracy"] = (int((right & done & noisy).sum()), int((done & noisy).sum()))
    return counts


def records_of_training(log: Any, labels: Any) -> list[dict[str, Any]]:
    """One record per training example."""
    pred, _ = _final(log)
    hits = np.asarray(log.pred) == labels.noisy
    first = np.where(hits.any(axis=0), np.argmax(hits, axis=0) + 1, 0)
    corrected = last_corrected(log)
    rows = []
    for i in range(len(labels.clean)):
        row: dict[str, Any] = {"index": i, "clean_label": int(labels.clean[i]), "noisy_label": int(labels.noisy[i]),
                               "noisy": bool(labels.mask[i]), "final_prediction": int(pred[i]),
                               "predicts_noisy_label": bool(pred[i] == labels.noisy[i]),
                               "first_epoch_noisy_label": int(first[i]) or None}
        if corrected is not None:
            row["corrected_label"] = int(corrected[i]) if corrected[i] >= 0 else None
        rows.append(row)
    return rows
