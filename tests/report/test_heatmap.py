"""The HeatMap block: cell colours on the diverging scale, undefined cells, and its rendering in
HTML (escaped SVG) and Markdown (a table)."""

from __future__ import annotations

from memeval.blocks import HeatMap
from memeval.report import svg


def test_cells_are_red_above_the_middle_blue_below_white_at_it_and_grey_when_undefined():
    block = HeatMap(
        "r", ["layer 1", "layer 2"], ["a", "b", "c"], [[1.0, -1.0, 0.0], [0.5, None, 3.0]]
    )
    geometry = svg.heat_map(block)
    fills = [c["fill"] for c in geometry["cells"]]
    assert fills == [
        "rgb(255,0,0)",
        "rgb(0,0,255)",
        "rgb(255,255,255)",
        "rgb(255,128,128)",
        "#dddddd",
        "rgb(255,0,0)",
    ]  # 3.0 is clipped to the top of the range
    assert [c["label"] for c in geometry["cells"]] == [
        "1.00",
        "-1.00",
        "0.00",
        "0.50",
        "n/a",
        "3.00",
    ]
    xs = sorted({c["x"] for c in geometry["cells"]})
    ys = sorted({c["y"] for c in geometry["cells"]})
    assert (
        len(xs) == 3 and len(ys) == 2 and geometry["width"] > xs[-1] and geometry["height"] > ys[-1]
    )
    shifted = svg.heat_map(HeatMap("r", ["x"], ["y"], [[0.75]], value_range=(0.5, 1.0)))
    assert shifted["cells"][0]["fill"] == "rgb(255,255,255)"


def test_heat_map_renders_escaped_in_html_and_as_a_markdown_table(tmp_path):
    from memeval.blocks import Section
    from memeval.report.html import block_view
    from memeval.report.markdown import tables

    class Report:
        redact = False

        @staticmethod
        def text(value):
            return "" if value is None else str(value)

    block = HeatMap("<b>map</b>", ["<script>x</script>"], ["col"], [[0.25]])
    view = block_view(block, Report())
    assert view["kind"] == "heatmap" and view["geometry"]["rows"][0][1] == "<script>x</script>"
    found = tables(Report(), [Section("S", [block])])
    assert found == [
        {"title": "S: <b>map</b>", "columns": ["", "col"], "rows": [["<script>x</script>", "0.25"]]}
    ]
