"""Label-noise metrics and records against a hand-made log."""

from __future__ import annotations

import numpy as np

from memeval.train.metrics import LabelSet, curves, final_metrics, first_epoch, records
from memeval.train.trainers import TrainingLog

# 4 training examples, 1 and 3 mislabeled (clean 0 / 1, noisy 2 / 0); 2 test examples.
LABELS = LabelSet(clean=np.array([0, 0, 1, 1]), noisy=np.array([0, 2, 1, 0]),
                  mask=np.array([False, True, False, True]), test=np.array([1, 2]))


def make_log(corrected: bool = False) -> TrainingLog:
    pred = np.array([[0, 0, 0, 1],    # epoch 1: no noisy label fitted
                     [0, 2, 1, 1],    # epoch 2: example 1 memorized
                     [0, 2, 1, 0]])   # epoch 3: both memorized
    test_pred = np.array([[1, 0], [1, 2], [-1, -1]])  # epoch 3's test predictions were not logged
    log = TrainingLog(loss=np.zeros((3, 4), np.float32), pred=pred, test_pred=test_pred, epoch_seconds=np.ones(3),
                      final_pred=np.array([0, 2, 1, 1]), final_test_pred=np.array([1, 1]))
    if corrected:
        log.extras["corrected"] = np.array([[-1, -1, -1, -1], [0, 2, 1, 1], [0, 0, 1, -1]])
    return log


def test_curves_by_hand():
    c = curves(make_log(), LABELS)
    assert c.epochs.tolist() == [1, 2, 3]
    assert c.memorization_rate.tolist() == [0.0, 0.5, 1.0]
    assert c.clean_train_fit.tolist() == [0.5, 1.0, 1.0]
    assert c.clean_test_accuracy[:2].tolist() == [0.5, 1.0] and np.isnan(c.clean_test_accuracy[2])
    assert c.label_correction_accuracy is None


def test_correction_curves_and_final_metrics_by_hand():
    c = curves(make_log(corrected=True), LABELS)
    assert np.isnan(c.label_correction_accuracy[0])
    assert c.label_correction_accuracy[1:].tolist() == [0.75, 1.0]  # epoch 3: 3 corrected, all right
    assert c.noisy_label_correction_accuracy[1:].tolist() == [0.5, 1.0]
    final = final_metrics(make_log(corrected=True), LABELS)
    # final predictions [0, 2, 1, 1]: example 1 memorized, 3 not; test [1, 1] vs [1, 2]
    assert final["memorization_rate"] == 0.5 and final["clean_train_fit"] == 1.0
    assert final["clean_test_accuracy"] == 0.5
    # last corrections: [0, 0, 1, 1] (example 3's is from epoch 2): all clean
    assert final["label_correction_accuracy"] == 1.0 and final["noisy_label_correction_accuracy"] == 1.0


def test_records_by_hand():
    rows = records(make_log(corrected=True), LABELS)
    assert [r["first_epoch_noisy_label"] for r in rows] == [1, 2, 2, 3]
    assert [r["predicts_noisy_label"] for r in rows] == [True, True, True, False]
    assert rows[1] == {"index": 1, "clean_label": 0, "noisy_label": 2, "noisy": True, "final_prediction": 2,
                       "predicts_noisy_label": True, "first_epoch_noisy_label": 2, "corrected_label": 0}
    assert "corrected_label" not in records(make_log(), LABELS)[0]


def test_first_epoch_zero_when_never():
    hits = np.array([[False, True], [False, True]])
    assert first_epoch(hits).tolist() == [0, 1]
