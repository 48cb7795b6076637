"""Statistics shared by every method: confidence intervals (and later ROC/AUC, TPR@FPR).

One place, each function tested against a reference implementation or a closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

from memeval.results import Metric

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 2000


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[..., np.ndarray] = np.mean,
                 level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` (which must accept `axis=`).

    Resamples are drawn with a seeded generator, so the same values give the same interval.
    With fewer than two values there is no spread to resample: the interval is (nan, nan).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = statistic(data[rng.integers(0, data.size, size=(n_resamples, data.size))], axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return float(low), float(high)


def clopper_pearson(successes: int, trials: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Exact binomial CI of a proportion (Clopper and Pearson, 1934)."""
    if trials == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else sps.beta.ppf(alpha / 2, successes, trials - successes + 1)
    high = 1.0 if successes == trials else sps.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(low), float(high)


def mean_metric(name: str, values: Sequence[float], seed: int = 0, level: float = DEFAULT_LEVEL,
                statistic: Callable[..., np.ndarray] = np.mean, label: str = "mean") -> Metric:
    """A metric that summarises per-sample values, with a percentile-bootstrap CI."""
    data = np.asarray(values, dtype=np.float64)
    value = float(statistic(data)) if data.size else float("nan")
    low, high = bootstrap_ci(data, statistic, level=level, seed=seed)
    return Metric(name=name, value=value, ci_low=low, ci_high=high, ci_level=level,
                  ci_method=f"bootstrap-percentile({label})", n=int(data.size))


def rate_metric(name: str, successes: int, trials: int, level: float = DEFAULT_LEVEL) -> Metric:
    """A proportion with its exact (Clopper-Pearson) CI."""
    low, high = clopper_pearson(successes, trials, level)
    value = successes / trials if trials else float("nan")
    return Metric(name=name, value=value, ci_low=low, ci_high=high, ci_level=level,
                  ci_method="clopper-pearson", n=trials)
