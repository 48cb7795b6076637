"""What PreCog scores are compared with: accuracy per PreCog bucket and the Spearman correlation
between PreCog and correctness, with a bootstrap CI."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memeval.api import DEFAULT_LEVEL, DEFAULT_RESAMPLES, clopper_pearson


def bucket_of(value: float, edges: Sequence[float]) -> int:
    """Index i of the bucket [edges[i], edges[i+1]) holding value; the last bucket is closed."""
    return int(min(np.searchsorted(edges, value, side="right") - 1, len(edges) - 2))


def bucket_accuracy(precog: Sequence[float], correct: Sequence[bool], edges: Sequence[float]
                    ) -> list[dict[str, float | int | None]]:
    """Per bucket: its bounds, examples, correct ones, accuracy and its Clopper-Pearson CI."""
    index = np.array([bucket_of(v, edges) for v in precog], dtype=int)
    hits = np.asarray(correct, dtype=bool)
    rows = []
    for i in range(len(edges) - 1):
        members = index == i
        n, k = int(members.sum()), int(hits[members].sum())
        low, high = clopper_pearson(k, n)
        rows.append({"low": edges[i], "high": edges[i + 1], "n": n, "correct": k,
                     "accuracy": k / n if n else None, "ci_low": low if n else None, "ci_high": high if n else None})
    return rows


def spearman_ci(x: Sequence[float], y: Sequence[float], seed: int = 0, level: float = DEFAULT_LEVEL,
                resamples: int = DEFAULT_RESAMPLES) -> tuple[float, float, float]:
    """Spearman's rho and a percentile-bootstrap CI over resampled (x, y) pairs. Resamples where
    either side is constant have no correlation and are left out; NaN when rho itself is undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), float("nan")
    from scipy import stats  # imported when used, not when the plugin loads

    rho = float(stats.spearmanr(a, b).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, a.size, a.size)
        if np.ptp(a[pick]) > 0 and np.ptp(b[pick]) > 0:
            draws.append(stats.spearmanr(a[pick], b[pick]).statistic)
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]) if draws else (float("nan"), float("nan"))
    return rho, float(low), float(high)
