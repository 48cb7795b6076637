"""Plot geometry for the HTML report: data coordinates to SVG pixels, axis ticks, bars.

Only layout happens here; the templates turn it into inline SVG (escaped by Jinja), so the report
needs no JavaScript, no plotting library and no network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from memeval.blocks import Histogram, LinePlot

WIDTH, HEIGHT = 520, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 14, 44
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Scale:
    low: float
    high: float
    start: float  # pixel of `low`
    end: float    # pixel of `high`
    log: bool = False  # low and high are then powers of ten, values are data

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(value)
        span = self.high - self.low or 1.0
        return round(self.start + (value - self.low) / span * (self.end - self.start), 2)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            return [(self(10.0 ** e), tick_label(10.0 ** e)) for e in range(math.floor(self.low), math.ceil(self.high) + 1)
                    if self.low <= e <= self.high]
        return [(self(t), tick_label(t)) for t in nice_ticks(self.low, self.high)]


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
    geometry.x_ticks = x.ticks()
    geometry.y_ticks = y.ticks()


def line_plot(plot: LinePlot) -> Geometry:
    geometry = Geometry()
    usable = (lambda v: v > 0) if plot.log_x else (lambda v: True)  # noqa: E731
    xs = [v for s in plot.series for v in s.x if _finite(v) and usable(v)]
    ys = [v for s in plot.series for v in (s.y + (s.low or []) + (s.high or []))]
    if plot.log_x:
        low, high = _range(xs, plot.x_range)
        x = Scale(math.floor(math.log10(low)), math.ceil(math.log10(high)), geometry.left, geometry.right, log=True)
    else:
        x = Scale(*_range(xs, plot.x_range), geometry.left, geometry.right)
    y = Scale(*_range(ys, plot.y_range), geometry.bottom, geometry.top)
    _axes(geometry, x, y)
    for i, series in enumerate(plot.series):
        points = [(x(a), y(b)) for a, b in zip(series.x, series.y, strict=True) if _finite(a, b) and usable(a)]
        line = {"name": series.name, "color": PALETTE[i % len(PALETTE)],
                "points": " ".join(f"{a},{b}" for a, b in points), "dots": points if plot.markers else []}
        if series.low is not None and series.high is not None:
            upper = [(x(a), y(h)) for a, h in zip(series.x, series.high, strict=True) if _finite(a, h) and usable(a)]
            lower = [(x(a), y(lo)) for a, lo in zip(series.x, series.low, strict=True) if _finite(a, lo) and usable(a)]
            line["band"] = " ".join(f"{a},{b}" for a, b in upper + lower[::-1])
        geometry.lines.append(line)
    if plot.diagonal:  # y = x, drawn as a polyline so it stays straight on a log x axis too
        low, high = (10.0 ** x.low, 10.0 ** x.high) if x.log else (max(x.low, y.low), min(x.high, y.high))
        steps = [low * (high / low) ** (i / 40) for i in range(41)] if x.log else [low, high]
        geometry.diagonal = " ".join(f"{x(v)},{y(v)}" for v in steps if y.low <= v <= y.high)
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
