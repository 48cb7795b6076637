"""Plot geometry for the HTML report: data coordinates to SVG pixels, axis ticks, bars.

Only layout happens here; the templates turn it into inline SVG (escaped by Jinja), so the report
needs no JavaScript, no plotting library and no network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from memeval.blocks import HeatMap, Histogram, LinePlot

WIDTH, HEIGHT = 520, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 14, 44
DASHES = ("", "7 3", "2 3", "9 3 2 3", "4 4", "1 2")  # with the colours: curves that overlap stay apart
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


def _scale(values: list[float], fixed: tuple[float, float] | None, log: bool, start: float, end: float) -> Scale:
    low, high = _range(values, fixed)
    if log:
        return Scale(math.floor(math.log10(low)), math.ceil(math.log10(high)), start, end, log=True)
    return Scale(low, high, start, end)


def line_plot(plot: LinePlot) -> Geometry:
    """Series as polylines (each with its own colour and dash pattern, so overlapping curves stay
    apart), optional CI bands and markers, and the chance diagonal drawn over everything."""
    geometry = Geometry()

    def usable(a: float | None, b: float | None) -> bool:
        return _finite(a, b) and (not plot.log_x or a > 0) and (not plot.log_y or b > 0)

    pairs = [(a, b) for s in plot.series for a, b in zip(s.x, s.y, strict=True) if usable(a, b)]
    bands = [v for s in plot.series for v in (s.low or []) + (s.high or []) if _finite(v) and (not plot.log_y or v > 0)]
    x = _scale([a for a, _ in pairs], plot.x_range, plot.log_x, geometry.left, geometry.right)
    y = _scale([b for _, b in pairs] + bands, plot.y_range, plot.log_y, geometry.bottom, geometry.top)
    _axes(geometry, x, y)
    for i, series in enumerate(plot.series):
        points = [(x(a), y(b)) for a, b in zip(series.x, series.y, strict=True) if usable(a, b)]
        line = {"name": series.name, "color": PALETTE[i % len(PALETTE)], "dash": DASHES[i % len(DASHES)],
                "points": " ".join(f"{a},{b}" for a, b in points), "dots": points if plot.markers else []}
        if series.low is not None and series.high is not None:
            upper = [(x(a), y(h)) for a, h in zip(series.x, series.high, strict=True) if usable(a, h)]
            lower = [(x(a), y(lo)) for a, lo in zip(series.x, series.low, strict=True) if usable(a, lo)]
            line["band"] = " ".join(f"{a},{b}" for a, b in upper + lower[::-1])
        geometry.lines.append(line)
    if plot.diagonal:  # y = x, as a polyline so it stays straight or curves right on log axes
        geometry.diagonal = _diagonal(x, y)
    return geometry


def _diagonal(x: Scale, y: Scale) -> str:
    def bounds(scale: Scale) -> tuple[float, float]:
        return (10.0 ** scale.low, 10.0 ** scale.high) if scale.log else (scale.low, scale.high)

    (xl, xh), (yl, yh) = bounds(x), bounds(y)
    low, high = max(xl, yl), min(xh, yh)
    if not low < high:
        return ""
    geometric = (x.log or y.log) and low > 0
    steps = [low * (high / low) ** (i / 40) for i in range(41)] if geometric else [low, high]
    return " ".join(f"{x(v)},{y(v)}" for v in steps)


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


def image(pixels: list[list[float]], size: float = 84.0) -> dict[str, Any]:
    """A grayscale image as SVG rects (white background, darker = larger value), at most `size` px wide."""
    height, width = len(pixels), max((len(row) for row in pixels), default=0)
    cell = round(size / max(width, height, 1), 3)
    rects = [{"x": round(c * cell, 3), "y": round(r * cell, 3), "shade": round(255 * (1 - min(max(v, 0.0), 1.0)))}
             for r, row in enumerate(pixels) for c, v in enumerate(row) if _finite(v) and v > 0.02]
    return {"width": round(width * cell, 3), "height": round(height * cell, 3), "cell": cell, "rects": rects}
HEAT_CELL_W, HEAT_CELL_H, HEAT_LEFT, HEAT_TOP = 96, 22, 120, 40


def heat_map(block: HeatMap) -> dict:
    """Cells of a heat map: position, fill (blue below the middle of the range, red above, white at
    it) and the value printed in it; undefined cells are grey."""
    low, high = block.value_range
    middle, half = (low + high) / 2, (high - low) / 2 or 1.0
    cells = []
    for i, row in enumerate(block.values):
        for j, value in enumerate(row):
            cell = {"x": HEAT_LEFT + j * HEAT_CELL_W, "y": HEAT_TOP + i * HEAT_CELL_H, "label": "n/a", "fill": "#dddddd",
                    "title": f"{block.row_labels[i]} / {block.column_labels[j]}"}
            if _finite(value):
                t = max(-1.0, min(1.0, (value - middle) / half))
                fade = round(255 * (1 - abs(t)))
                cell["fill"] = f"rgb({255 if t > 0 else fade},{fade},{255 if t < 0 else fade})"
                cell["label"] = f"{value:.2f}"
            cells.append(cell)
    return {"width": HEAT_LEFT + HEAT_CELL_W * len(block.column_labels) + 8,
            "height": HEAT_TOP + HEAT_CELL_H * len(block.row_labels) + 8, "cell_w": HEAT_CELL_W,
            "cell_h": HEAT_CELL_H, "cells": cells,
            "rows": [(HEAT_TOP + (i + 0.5) * HEAT_CELL_H + 4, label) for i, label in enumerate(block.row_labels)],
            "columns": [(HEAT_LEFT + (j + 0.5) * HEAT_CELL_W, label) for j, label in enumerate(block.column_labels)],
            "left": HEAT_LEFT, "top": HEAT_TOP}
