"""What a method plugin contributes to the reports: sections made of typed blocks.

A plugin never writes HTML. It returns `Section`s built from the blocks below (plots, tables, the
most memorized samples next to the truth) from `memeval_report_sections`, and the reporters render
them: escaped, in inline SVG, with `Sensitive` text masked when the suite asks for redaction.
Data only, so the same section renders in HTML and Markdown and cannot inject markup.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOP_N = 10  # samples a report shows per table or comparison (aggregates cover the rest)


@dataclass(frozen=True)
class Sensitive:
    """Text that may be memorized training data: shown as is, or masked under `redact: true`
    (its length and a hash prefix stay, so two masked texts can still be told apart)."""

    text: str

    def masked(self) -> str:
        digest = hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:10]
        return f"[redacted: {len(self.text)} chars, sha256 {digest}]"


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


Block = LinePlot | Histogram | Table | Comparison | Text


@dataclass
class Section:
    title: str
    blocks: list[Block]
    description: str = ""


class Records:
    """An evaluation's records, streamed from `records/<id>.jsonl` (never all held in memory)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)

    def top(self, n: int, key: Callable[[dict[str, Any]], float],
            where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The n records with the largest key (ties keep file order), in one streaming pass."""
        chosen = (r for r in self if where is None or where(r))
        return heapq.nlargest(n, chosen, key=key)


def histogram_of(values: list[float], title: str, x_label: str, bins: int = 20,
                 value_range: tuple[float, float] | None = None) -> Histogram | None:
    """A histogram block of finite values (None when there are none)."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return None
    counts, edges = np.histogram(finite, bins=bins, range=value_range)
    return Histogram(title, x_label, edges.round(6).tolist(), counts.tolist())
