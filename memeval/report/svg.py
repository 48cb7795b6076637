"""Plot geometry for the HTML report: data coordinates to SVG pixels, axis ticks, bars.

Only layout happens here; the templates turn it into inline SVG (escaped by Jinja), so the report
needs no JavaScript, no plotting library and no network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from memeval.report.sections import Histogram, LinePlot

WIDTH, HEIGHT = 560, 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 14, 44
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Scale:
    low: float
    high: float
    start: float  # pixel of `low`
    end: float    # pixel of `high`

    def __call__(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return round(self.start + (value - self.low) / span * (self.end - self.start), 2)


@dataclass
class Geometry:
    width: int = WIDTH
    height: int = HEIGHT
    left: float = MARGIN_LEFT
    right: float = WIDTH - MARGIN_RIGHT
    top: float = MARGIN_TOP
    bottom: float = HEIGHT - MARGIN_BOTTOM
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    lines: list[dict] = field(default_factory=list)
    bars: list[dict] = field(default_factory=list)
    diagonal: str | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float) -> str:
    return f"{value:.4g}"


def _range(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return low, high


def _axes(geometry: Geometry, x: Scale, y: Scale) -> None:
    geometry.x_ticks = [(x(t), tick_label(t)) for t in nice_ticks(x.low, x.high)]
    geometry.y_ticks = [(y(t), tick_label(t)) for t in nice_ticks(y.low, y.high)]


def line_plot(plot: LinePlot) -> Geometry:
    geometry = Geometry()
    xs = [v for s in plot.series for v in s.x]
    ys = [v for s in plot.series for v in (s.y + (s.low or []) + (s.high or []))]
    x = Scale(*_range(xs, plot.x_range), geometry.left, geometry.right)
    y = Scale(*_range(ys, plot.y_range), geometry.bottom, geometry.top)
    _axes(geometry, x, y)
    for i, series in enumerate(plot.series):
        points = [(x(a), y(b)) for a, b in zip(series.x, series.y, strict=True) if _finite(a, b)]
        line = {"name": series.name, "color": PALETTE[i % len(PALETTE)],
                "points": " ".join(f"{a},{b}" for a, b in points), "dots": points if plot.markers else []}
        if series.low is not None and series.high is not None:
            upper = [(x(a), y(h)) for a, h in zip(series.x, series.high, strict=True) if _finite(a, h)]
            lower = [(x(a), y(lo)) for a, lo in zip(series.x, series.low, strict=True) if _finite(a, lo)]
            line["band"] = " ".join(f"{a},{b}" for a, b in upper + lower[::-1])
        geometry.lines.append(line)
    if plot.diagonal:
        low, high = max(x.low, y.low), min(x.high, y.high)
        geometry.diagonal = f"{x(low)},{y(low)} {x(high)},{y(high)}"
    return geometry


def histogram(plot: Histogram) -> Geometry:
    geometry = Geometry()
    x = Scale(plot.edges[0], plot.edges[-1], geometry.left, geometry.right)
    y = Scale(0.0, max(max(plot.counts, default=0), 1), geometry.bottom, geometry.top)
    _axes(geometry, x, y)
    geometry.y_ticks = [(pos, label) for pos, label in geometry.y_ticks if float(label).is_integer()]
    for count, low, high in zip(plot.counts, plot.edges, plot.edges[1:], strict=False):
        top = y(count)
        geometry.bars.append({"x": x(low) + 0.5, "y": top, "width": max(x(high) - x(low) - 1, 0.5),
                              "height": round(geometry.bottom - top, 2), "count": count,
                              "label": f"[{tick_label(low)}, {tick_label(high)}): {count}"})
    return geometry


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)
