"""Report blocks: what a method contributes to the reports, as typed data.

A plugin never writes HTML. It returns `Section`s built from the blocks below (plots, tables, the
most memorized samples next to the truth) from `Method.report_sections`, and the reporters render
them: escaped, in inline SVG, with `Sensitive` text masked when the suite asks for redaction.
Data only, so the same section renders in HTML and Markdown and cannot inject markup.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

TOP_N = 10  # samples a report shows per table or comparison (aggregates cover the rest)


@dataclass(frozen=True)
class Sensitive:
    """Text that may be memorized training data: shown as is, or masked under `redact: true`."""

    text: str

    def masked(self, key: bytes) -> str:
        """`[redacted: N chars, keyed hash H]`: H is an HMAC-SHA256 under `key`, a secret made for
        one report and never written, so equal texts match within the report but no hash can be
        brute-forced back into the text (as a plain hash of a short secret could)."""
        digest = hmac.new(key, self.text.encode("utf-8"), hashlib.sha256).hexdigest()[:10]
        return f"[redacted: {len(self.text)} chars, keyed hash {digest}]"


Cell = str | int | float | bool | Sensitive | None


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]
    low: list[float] | None = None   # a confidence band around y, when known
    high: list[float] | None = None


@dataclass
class LinePlot:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    x_range: tuple[float, float] | None = None  # None: fitted to the data
    y_range: tuple[float, float] | None = None
    diagonal: bool = False                      # the chance line of a ROC plot
    markers: bool = False
    log_x: bool = False                         # log10 x axis (x <= 0 is left out)
    log_y: bool = False                         # log10 y axis (y <= 0 is left out)


@dataclass
class Histogram:
    title: str
    x_label: str
    edges: list[float]
    counts: list[int]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    title: str = ""


@dataclass
class ComparedSample:
    """One sample's model output next to the truth it should (not) reproduce."""

    id: str
    truth: str
    output: str
    prompt: str = ""
    scores: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Comparison:
    title: str
    samples: list[ComparedSample]
    truth_label: str = "training text"
    output_label: str = "model output"


@dataclass
class Text:
    text: str


@dataclass
class Image:
    """A small grayscale image (e.g. a training input), rows of values in [0, 1]; masked under
    `redact: true` like sensitive text (it may be training data)."""

    pixels: list[list[float]]
    caption: str = ""


@dataclass
class ImageGrid:
    title: str
    images: list[Image]


@dataclass
class HeatMap:
    """A grid of numbers, each cell coloured by its value on a diverging scale over `value_range`
    (e.g. correlations by layer and reference); None is an undefined cell."""

    title: str
    row_labels: list[str]
    column_labels: list[str]
    values: list[list[float | None]]  # one list per row, one value per column
    value_range: tuple[float, float] = (-1.0, 1.0)


Block = LinePlot | Histogram | Table | Comparison | Text | ImageGrid | HeatMap


@dataclass
class Section:
    title: str
    blocks: list[Block]
    description: str = ""


def histogram_counts(values: Iterable[float | None], bins: int, lower: float | None = None,
                     upper: float | None = None) -> dict[str, list[float]] | None:
    """Bin edges and counts of the finite values (None when there are none). Values are clipped
    into [lower, upper] (e.g. a BLEU of 1.0000000000000004 stays in the last bin); a missing bound is
    the data's own."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return None
    low = float(data.min()) if lower is None else lower
    high = max(float(data.max()) if upper is None else upper, low + 1e-9)
    counts, edges = np.histogram(np.clip(data, low, high), bins=bins, range=(low, high))
    return {"edges": edges.round(6).tolist(), "counts": counts.tolist()}


def histogram_of(values: Iterable[float | None], title: str, x_label: str, bins: int = 20,
                 value_range: tuple[float, float] | None = None) -> Histogram | None:
    """A histogram block of the finite values (None when there are none)."""
    lower, upper = value_range or (None, None)
    counts = histogram_counts(values, bins, lower, upper)
    return Histogram(title, x_label, counts["edges"], counts["counts"]) if counts else None
