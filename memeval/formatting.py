"""How numbers and metrics read in text: the terminal, Markdown, HTML, pytest and `compare` share it."""

from __future__ import annotations

import math
from typing import Any

from memeval.results import Metric


def number(value: Any, digits: int = 4) -> str:
    """A number to `digits` significant digits; 'n/a' for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def interval(low: float | None, high: float | None, digits: int = 4) -> str:
    """'[low, high]', or '' when the bounds are unknown."""
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f"[{number(low, digits)}, {number(high, digits)}]"


def metric_text(metric: Metric, digits: int = 4) -> str:
    """'name=value [ci_low, ci_high]'."""
    ci = interval(metric.ci_low, metric.ci_high, digits)
    return f"{metric.name}={number(metric.value, digits)}" + (f" {ci}" if ci else "")


def ci_text(metric: Metric, digits: int = 4) -> str:
    """'95% [low, high]', or '' without a CI."""
    ci = interval(metric.ci_low, metric.ci_high, digits)
    if not ci:
        return ""
    return f"{metric.ci_level:.0%} {ci}" if metric.ci_level else ci
