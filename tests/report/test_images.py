"""The image block: grayscale pixels as escaped inline SVG rects, masked under redaction."""

from __future__ import annotations

from types import SimpleNamespace

from memeval.blocks import Image, ImageGrid
from memeval.report.base import templates
from memeval.report.html import block_view


def _render(redact: bool) -> tuple[dict, str]:
    grid = ImageGrid("top <b>examples</b>", [Image([[0.0, 1.0], [0.5, 0.0]], "#3: 7 / 1 <script>")])
    report = SimpleNamespace(redact=redact, scrub=lambda text: text)
    view = block_view(grid, report)
    page = str(templates(autoescape=True).get_template("html/blocks.html.j2").module.render(view))
    return view, page


def test_an_image_is_one_rect_per_inked_pixel_darker_for_larger_values():
    view, page = _render(redact=False)
    geometry = view["images"][0]["geometry"]
    assert geometry["width"] == geometry["height"] == 84.0 and geometry["cell"] == 42.0
    assert [(r["x"], r["y"], r["shade"]) for r in geometry["rects"]] == [(42.0, 0.0, 0), (0.0, 42.0, 128)]
    assert page.count("<rect") == 3  # the frame and two pixels
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;examples" in page


def test_redaction_masks_the_pixels():
    view, page = _render(redact=True)
    assert view["images"][0]["geometry"] is None
    assert "<rect" not in page and "[image redacted]" in page
