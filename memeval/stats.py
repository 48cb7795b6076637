"""Statistics shared by every method: confidence intervals (and later ROC/AUC, TPR@FPR).

One place, each function tested against a reference implementation or a closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from memeval.results import Metric

BOOTSTRAP_CELLS = 2_000_000  # scores held at once by a row-wise bootstrap (16 MB)
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
    resampled = np.concatenate([statistic(data[index], axis=1) for index in resample_indices(rng, data.size,
                                                                                            n_resamples)])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return float(low), float(high)


RESAMPLE_CHUNK = 1_000_000  # indices drawn at once: 8 MB, whatever the number of samples


def resample_indices(rng: np.random.Generator, n: int, resamples: int) -> Iterator[np.ndarray]:
    """`rng.integers(0, n, size=(resamples, n))` in blocks of rows, so memory stays bounded as n
    grows. An even number of rows per block keeps the generator's stream aligned: the blocks are
    exactly the rows one draw would give (tests/test_stats.py checks it)."""
    rows = max(2, RESAMPLE_CHUNK // max(1, n) // 2 * 2)
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def paired_bootstrap_ci(base: Sequence[float] | np.ndarray, new: Sequence[float] | np.ndarray,
                        statistic: Callable[..., np.ndarray] = np.mean, level: float = DEFAULT_LEVEL,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(new) - statistic(base) over paired samples: the i-th
    values of `base` and `new` belong to one sample and are resampled together."""
    values = np.column_stack([np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)])
    rng = np.random.default_rng(seed)
    differences = np.concatenate([statistic(values[index, 1], axis=1) - statistic(values[index, 0], axis=1)
                                  for index in resample_indices(rng, len(values), resamples)])
    alpha = (1 - level) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    return float(low), float(high)


def clopper_pearson(successes: int, trials: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Exact binomial CI of a proportion (Clopper and Pearson, 1934)."""
    if trials == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    from scipy import stats as sps  # scipy.stats costs ~60 MB and ~0.5 s: imported only when used

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


# -- ROC analysis ------------------------------------------------------------------------------
#
# Convention everywhere: a higher score means "more likely a member" (the positive class, label 1).
# Thresholds are "score >= t is called a member". TPR at a target FPR is the largest TPR among the
# ROC points whose FPR is at most the target (non-strict), so with n negatives the smallest
# meaningful target is 1/n.


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score plus the (0, 0) start.

    Tied scores move together (one point per distinct threshold), as scikit-learn's
    `roc_curve(..., drop_intermediate=False)`.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("ROC analysis needs both members and non-members")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_each_threshold = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_each_threshold]
    fp = np.cumsum(~y)[last_of_each_threshold]
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    thresholds = np.r_[np.inf, s[last_of_each_threshold]]
    return fpr, tpr, thresholds


def _sorted_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `scores` (shape (r, n); `labels` shape (n,)): TPR and FPR after each position of
    the scores sorted high to low, and whether that position closes a threshold (the last of a run
    of tied scores); one ROC point per closing position, as `roc_curve` gives for a single row."""
    order = np.argsort(-scores, axis=1, kind="mergesort")
    ranked = np.take_along_axis(scores, order, axis=1)
    hits = labels[order]
    tpr = np.cumsum(hits, axis=1) / labels.sum()
    fpr = np.cumsum(~hits, axis=1) / (~labels).sum()
    closes = np.ones_like(ranked, dtype=bool)
    closes[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    return tpr, fpr, closes


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row: the Mann-Whitney U over n1 n0, ties counting one half (equal to the
    trapezoid under `roc_curve`)."""
    from scipy import stats as sps

    ranks = sps.rankdata(scores, axis=1)
    n1, n0 = labels.sum(), (~labels).sum()
    return (ranks[:, labels].sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _tpr_at_fpr_rows(labels: np.ndarray, scores: np.ndarray, target: float) -> np.ndarray:
    tpr, fpr, closes = _sorted_roc(labels, scores)
    return np.where(closes & (fpr <= target + 1e-12), tpr, 0.0).max(axis=1)


def _balanced_accuracy_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    tpr, fpr, closes = _sorted_roc(labels, scores)
    return np.maximum(np.where(closes, (tpr + 1.0 - fpr) / 2.0, 0.0).max(axis=1), 0.5)


def by_rows(rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Callable], Callable]:
    """Give a ROC statistic its row-wise form (`statistic.rows(labels, scores of shape (r, n))`),
    so a bootstrap computes all its resamples at once."""
    def attach(statistic: Callable) -> Callable:
        statistic.rows = rows  # type: ignore[attr-defined]
        return statistic
    return attach


@by_rows(_auc_rows)
def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half: the Mann-Whitney U statistic / n1 n0)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, target: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= target + 1e-12].max())


def tpr_at_fpr_statistic(target: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """`tpr_at_fpr` at one target, as a statistic a bootstrap can resample row-wise."""
    @by_rows(lambda labels, scores: _tpr_at_fpr_rows(labels, scores, target))
    def statistic(labels: np.ndarray, scores: np.ndarray) -> float:
        return tpr_at_fpr(labels, scores, target)
    return statistic


@by_rows(_balanced_accuracy_rows)
def best_balanced_accuracy(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """max over thresholds of (TPR + TNR) / 2."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(((tpr + 1.0 - fpr) / 2.0).max())


def stratified_bootstrap_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                            statistic: Callable[[np.ndarray, np.ndarray], float], level: float = DEFAULT_LEVEL,
                            n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of a ROC statistic, resampling members and non-members separately
    (so every resample keeps both classes at their sizes). `scores` may have one column per
    scorer (shape (n, m)): rows are resampled together, so a statistic comparing scorers is paired."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) < 2 or len(neg) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resample_labels = np.r_[np.ones(len(pos), dtype=bool), np.zeros(len(neg), dtype=bool)]
    draws = [(rng.integers(0, len(pos), len(pos)), rng.integers(0, len(neg), len(neg))) for _ in range(n_resamples)]
    rows = getattr(statistic, "rows", None)
    if rows is not None:  # every resample at once, in chunks of bounded memory
        chunk = max(1, BOOTSTRAP_CELLS // s.size)
        values = np.concatenate([
            rows(resample_labels, np.concatenate([pos[np.stack([p for p, _ in part])],
                                                  neg[np.stack([n for _, n in part])]], axis=1))
            for part in (draws[i:i + chunk] for i in range(0, n_resamples, chunk))])
    else:
        values = np.array([statistic(resample_labels, np.concatenate([pos[p], neg[n]])) for p, n in draws])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def roc_metric(name: str, labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
               statistic: Callable[[np.ndarray, np.ndarray], float], seed: int = 0,
               level: float = DEFAULT_LEVEL, n_resamples: int = 1000) -> Metric:
    """A ROC statistic with a stratified bootstrap CI."""
    value = statistic(np.asarray(labels), np.asarray(scores))
    low, high = stratified_bootstrap_ci(labels, scores, statistic, level, n_resamples, seed)
    return Metric(name=name, value=float(value), ci_low=low, ci_high=high, ci_level=level,
                  ci_method="stratified-bootstrap-percentile", n=int(np.asarray(labels).size))


# -- cross-validated linear model (the blind baseline's classifier) -----------------------------


def logistic_regression(features: np.ndarray, labels: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """L2-regularised logistic regression (weights, then intercept), fitted with L-BFGS.

    Minimises sum log(1 + exp(-y_i (w.x_i + b))) + l2/2 |w|^2 with y in {-1, +1}: the objective
    of scikit-learn's LogisticRegression(C=1/l2), against which it is tested.
    """
    from scipy.optimize import minimize

    x = np.asarray(features, dtype=np.float64)
    y = np.where(np.asarray(labels, dtype=bool), 1.0, -1.0)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margin = y * (x @ w + b)
        loss = np.logaddexp(0.0, -margin).sum() + 0.5 * l2 * w @ w
        weight = -y * _sigmoid(-margin)
        return loss, np.r_[x.T @ weight + l2 * w, weight.sum()]

    result = minimize(loss_and_grad, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": 500, "gtol": 1e-8})
    return result.x


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each sample, each class spread evenly over the folds (shuffled, seeded)."""
    y = np.asarray(labels, dtype=bool)
    folds = np.empty(y.size, dtype=int)
    rng = np.random.default_rng(seed)
    for cls in (True, False):
        members = np.flatnonzero(y == cls)
        folds[rng.permutation(members)] = np.arange(members.size) % n_folds
    return folds


def cross_validated_scores(features: np.ndarray, labels: np.ndarray, n_folds: int = 5, seed: int = 0,
                           l2: float = 1.0) -> np.ndarray:
    """Out-of-fold decision values of a standardised logistic regression."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    folds = stratified_folds(y, n_folds, seed)
    out = np.empty(y.size)
    for fold in range(n_folds):
        train, test = folds != fold, folds == fold
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        theta = logistic_regression((x[train] - mean) / std, y[train], l2)
        out[test] = ((x[test] - mean) / std) @ theta[:-1] + theta[-1]
    return out
