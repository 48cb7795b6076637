"""Confidence intervals against references: scipy's exact binomial CI and the normal closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from memeval.stats import bootstrap_ci, clopper_pearson, mean_metric, rate_metric


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (17, 200), (1, 1)])
def test_clopper_pearson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    low, high = clopper_pearson(k, n)
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_ci_of_the_mean_approaches_the_normal_interval():
    values = np.random.default_rng(0).normal(5.0, 2.0, size=2000)
    low, high = bootstrap_ci(values, n_resamples=4000)
    half = 1.959964 * values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half, abs=0.01)
    assert high == pytest.approx(values.mean() + half, abs=0.01)


def test_bootstrap_is_deterministic_and_degenerate_inputs_have_no_interval():
    values = [1.0, 2.0, 4.0, 8.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert all(np.isnan(bootstrap_ci([1.0])))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_metric_helpers():
    m = mean_metric("x", [1.0, 2.0, 3.0])
    assert m.value == 2.0 and m.n == 3 and m.ci_low <= 2.0 <= m.ci_high
    r = rate_metric("r", 3, 10)
    assert r.value == 0.3 and r.ci_method == "clopper-pearson"


# -- ROC ----------------------------------------------------------------------------------------

from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.metrics import roc_curve as sk_roc_curve  # noqa: E402

from memeval.stats import (  # noqa: E402
    best_balanced_accuracy,
    cross_validated_scores,
    logistic_regression,
    roc_auc,
    roc_curve,
    roc_metric,
    stratified_bootstrap_ci,
    stratified_folds,
    tpr_at_fpr,
)


def random_cases(n_cases=150):
    rng = np.random.default_rng(0)
    for case in range(n_cases):
        n = int(rng.integers(4, 80))
        labels = rng.integers(0, 2, n)
        labels[:2] = [1, 0]
        scores = rng.integers(0, 4, n).astype(float) if case % 2 else rng.normal(size=n)  # odd cases: heavy ties
        yield labels, scores


def test_roc_and_auc_match_scikit_learn_on_random_and_tied_scores():
    for labels, scores in random_cases():
        fpr, tpr, thresholds = roc_curve(labels, scores)
        ref_fpr, ref_tpr, ref_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        np.testing.assert_allclose(thresholds[1:], ref_thr[1:])
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_tpr_at_fpr_is_the_best_tpr_with_fpr_at_most_the_target():
    for labels, scores in random_cases():
        ref_fpr, ref_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
        for target in (0.0, 0.01, 0.1, 0.25, 0.5):
            assert tpr_at_fpr(labels, scores, target) == pytest.approx(ref_tpr[ref_fpr <= target].max())
        best = max((t + 1 - f) / 2 for f, t in zip(ref_fpr, ref_tpr, strict=True))
        assert best_balanced_accuracy(labels, scores) == pytest.approx(best)


def test_ties_count_one_half():
    assert roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert roc_auc([1, 0], [1.0, 1.0]) == 0.5
    # A member tied with a non-member at the top: the first ROC step moves both rates together.
    assert tpr_at_fpr([1, 0, 1, 0], [2.0, 2.0, 1.0, 0.0], 0.0) == 0.0
    assert roc_auc([1, 0, 1, 0], [2.0, 2.0, 1.0, 0.0]) == pytest.approx(roc_auc_score([1, 0, 1, 0], [2, 2, 1, 0]))


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_curve([1, 1], [0.1, 0.2])


def test_stratified_bootstrap_keeps_class_sizes_and_covers_the_value():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(60), np.zeros(40)].astype(int)
    scores = rng.normal(size=100) + labels
    seen = []

    def record_sizes(y, s):
        seen.append(int(y.sum()))
        return roc_auc(y, s)

    low, high = stratified_bootstrap_ci(labels, scores, record_sizes, n_resamples=200)
    assert set(seen) == {60} and low < roc_auc(labels, scores) < high
    metric = roc_metric("auc", labels, scores, roc_auc)
    assert metric.ci_low < metric.value < metric.ci_high and metric.n == 100


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = x[:, 0] - 0.5 * x[:, 3] + rng.normal(size=120) > 0
    theta = logistic_regression(x, y, l2=0.5)
    ref = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(theta[:-1], ref.coef_[0], atol=1e-4)
    assert theta[-1] == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_cross_validated_scores_match_scikit_learn_on_the_same_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 4))
    y = x[:, 1] + rng.normal(size=90) > 0
    folds = stratified_folds(y, 3, seed=5)
    assert all(abs((y[folds == f]).sum() - y.sum() / 3) <= 1 for f in range(3))
    ours = cross_validated_scores(x, y, n_folds=3, seed=5)
    for fold in range(3):
        train, test = folds != fold, folds == fold
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(tol=1e-12, max_iter=10_000).fit(scaler.transform(x[train]), y[train])
        np.testing.assert_allclose(ours[test], model.decision_function(scaler.transform(x[test])), atol=1e-4)


def test_bootstrap_in_bounded_blocks_equals_one_draw(monkeypatch):
    """Resamples drawn in blocks (bounded memory for millions of samples) are the very resamples
    one (resamples x n) draw gives: the same CI for odd and even n (to the last bit or two: numpy
    may sum a row of a smaller block in another order)."""
    import memeval.stats as stats

    monkeypatch.setattr(stats, "RESAMPLE_CHUNK", 1000)  # blocks of 2 rows at n = 999
    for n in (999, 1000):
        values = np.random.default_rng(1).normal(size=n)
        draws = np.random.default_rng(7).integers(0, n, size=(300, n))
        means = values[draws].mean(axis=1)
        expected = np.quantile(means, [0.025, 0.975])
        assert stats.bootstrap_ci(values, n_resamples=300, seed=7) == pytest.approx(expected, rel=1e-12, abs=0)
        other = values + np.random.default_rng(2).normal(size=n)
        change = other[draws].mean(axis=1) - values[draws].mean(axis=1)
        expected = np.quantile(change, [0.025, 0.975])
        assert stats.paired_bootstrap_ci(values, other, resamples=300, seed=7) == pytest.approx(expected, rel=1e-12,
                                                                                                abs=0)
