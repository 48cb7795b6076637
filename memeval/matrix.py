"""`matrix:` on a model or an evaluation, as pytest's parametrize: one variant per combination of
values, with ids like `crosssplit[seed=1,noise.rate=0.4]`; and the metrics of variants that differ
only in their seed, aggregated over the seeds."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from memeval.results import EvaluationResult
from memeval.stats import DEFAULT_LEVEL

SEED = "seed"


def combinations(matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every assignment of one value to each key, in the order the keys and values are written
    (the last key varies fastest); [{}] for no matrix."""
    keys = list(matrix)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]


def variant_id(base: str, assignment: dict[str, Any]) -> str:
    """`base[k1=v1,k2=v2]`, or `base` for the empty assignment."""
    if not assignment:
        return base
    return f"{base}[{','.join(f'{k}={value_text(v)}' for k, v in assignment.items())}]"


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def with_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with the nested key `a.b.c` set to `value` (missing levels are created).
    Raises ValueError when a level on the way is set to something other than a mapping."""
    out = copy.deepcopy(data)
    node = out
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"'{'.'.join(parts[:depth + 1])}' is {child!r}, not a mapping, so "
                             f"'{dotted}' cannot be set")
        node = child
    node[parts[-1]] = value
    return out


def aggregate_over_seeds(evaluations: Iterable[EvaluationResult], level: float = DEFAULT_LEVEL) -> list[dict[str, Any]]:
    """For each group of evaluations that share a base id and every matrix value but the seed:
    each metric's mean over the seeds with a Student-t CI (the seeds as independent replicates).
    Errored evaluations are left out, and counted; a group of one seed is no aggregate."""
    groups: dict[tuple[str, str], list[EvaluationResult]] = {}
    for evaluation in evaluations:
        if evaluation.base_id is None or SEED not in evaluation.matrix:
            continue
        rest = {k: v for k, v in evaluation.matrix.items() if k != SEED}
        groups.setdefault((evaluation.base_id, variant_id(evaluation.base_id, rest)), []).append(evaluation)
    return [_aggregate(base, group_id, members, level) for (base, group_id), members in groups.items()
            if len(members) > 1]  # one seed is no replicate (e.g. -k chose it)


def _aggregate(base: str, group_id: str, members: list[EvaluationResult], level: float) -> dict[str, Any]:
    done = [e for e in members if e.status != "error"]
    metrics = []
    for name in dict.fromkeys(m.name for e in done for m in e.metrics):
        found = [e.metric(name) for e in done]
        values = [m.value for m in found if m is not None and m.value is not None and math.isfinite(m.value)]
        if not values:
            continue
        low, high = t_interval(values, level)
        if low is not None and all(m is not None and m.ci_method == "clopper-pearson" for m in found):
            low, high = max(low, 0.0), min(high, 1.0)  # a rate's mean stays a rate
        metrics.append({"name": name, "mean": float(np.mean(values)), "ci_low": low, "ci_high": high,
                        "ci_level": level, "ci_method": "student-t over seeds", "n": len(values),
                        "values": values, "higher_is_worse": found[0].higher_is_worse if found[0] else None})
    first = members[0]
    return {"id": group_id, "evaluation": base, "method": first.method,
            "matrix": {k: v for k, v in first.matrix.items() if k != SEED},
            "seeds": [e.matrix[SEED] for e in done], "errored": len(members) - len(done), "metrics": metrics}


def t_interval(values: list[float], level: float = DEFAULT_LEVEL) -> tuple[float | None, float | None]:
    """mean ± t(level, n-1) · sd / sqrt(n); no interval from a single value."""
    if len(values) < 2:
        return None, None
    data = np.asarray(values, dtype=np.float64)
    from scipy import stats as sps  # ~60 MB: imported only when used

    half = sps.t.ppf((1 + level) / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data))
    return float(data.mean() - half), float(data.mean() + half)
