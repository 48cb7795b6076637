"""Plot geometry: ticks, scales, bars and lines land where the data says."""

from __future__ import annotations

import pytest

from memeval.blocks import Histogram, LinePlot, Series, histogram_of
from memeval.report import svg


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.13, 0.97, [0.2, 0.4, 0.6, 0.8]),
    (0.0, 37.0, [0.0, 10.0, 20.0, 30.0]),
    (-3.0, 3.0, [-2.0, 0.0, 2.0]),
])
def test_nice_ticks(low, high, expected):
    assert svg.nice_ticks(low, high) == pytest.approx(expected)


def test_histogram_bars_are_proportional_to_counts():
    geometry = svg.histogram(Histogram("h", "x", [0.0, 0.5, 1.0, 1.5], [2, 4, 0]))
    heights = [bar["height"] for bar in geometry.bars]
    plot_height = geometry.bottom - geometry.top
    assert heights == pytest.approx([plot_height / 2, plot_height, 0.0], abs=0.02)
    assert [label for _, label in geometry.y_ticks] == ["0", "1", "2", "3", "4"]  # whole counts only


def test_line_plot_maps_corners_and_keeps_the_band():
    plot = LinePlot("p", "x", "y", [Series("s", [0.0, 1.0], [0.0, 1.0], [0.0, 0.5], [0.5, 1.0])],
                    (0.0, 1.0), (0.0, 1.0), diagonal=True)
    geometry = svg.line_plot(plot)
    line = geometry.lines[0]
    corners = [(geometry.left, geometry.bottom), (geometry.right, geometry.top)]
    assert [tuple(map(float, p.split(","))) for p in line["points"].split()] == corners
    assert len(line["band"].split()) == 4
    assert geometry.diagonal == line["points"]


def test_log_axis_puts_decades_evenly():
    plot = LinePlot("roc", "fpr", "tpr", [Series("a", [0.0, 0.01, 0.1, 1.0], [0.0, 0.2, 0.5, 1.0])],
                    (0.01, 1.0), (0.0, 1.0), log_x=True)
    geometry = svg.line_plot(plot)
    xs = [float(p.split(",")[0]) for p in geometry.lines[0]["points"].split()]
    assert len(xs) == 3  # x = 0 has no place on a log axis
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.02)
    assert [label for _, label in geometry.x_ticks] == ["0.01", "0.1", "1"]


def test_histogram_of_skips_non_finite_values():
    block = histogram_of([0.1, 0.2, float("nan"), None, float("inf"), 0.9], "t", "x", bins=4, value_range=(0, 1))
    assert block.counts == [2, 0, 0, 1]
    assert histogram_of([float("nan")], "t", "x") is None
