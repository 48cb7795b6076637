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
