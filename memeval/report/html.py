"""Builtin `html` reporter: one self-contained `report.html` (inline CSS and SVG, no scripts,
nothing fetched), from the templates in `reports/html/`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from memeval import hookimpl
from memeval.blocks import (
    Block,
    ComparedSample,
    Comparison,
    HeatMap,
    Histogram,
    ImageGrid,
    LinePlot,
    Section,
    Series,
    Table,
    Text,
)
from memeval.files import write_text
from memeval.registry import Registry
from memeval.report import svg
from memeval.report.base import ReportContext, across_seeds, excerpt, templates
from memeval.results import RunResult

TOKEN = re.compile(r"\s+|[^\W\d]+|\d|[^\w\s]")  # digits one by one: a code off by one digit shows it


def diff_segments(truth: str, output: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level diff: (kind, text) runs of the truth (same/missing) and the output (same/changed)."""
    a, b = TOKEN.findall(truth), TOKEN.findall(output)
    truth_runs: list[tuple[str, str]] = []
    output_runs: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        same = tag == "equal"
        if i2 > i1:
            truth_runs.append(("same" if same else "missing", "".join(a[i1:i2])))
        if j2 > j1:
            output_runs.append(("same" if same else "changed", "".join(b[j1:j2])))
    return truth_runs, output_runs


def compared_view(sample: ComparedSample, report: ReportContext) -> dict[str, Any]:
    scores = {k: report.text(v) for k, v in sample.scores.items()}
    if report.redact:
        return {"id": sample.id, "prompt": report.mask(sample.prompt) if sample.prompt else "",
                "truth": [("masked", report.mask(sample.truth))],
                "output": [("masked", report.mask(sample.output))], "scores": scores}
    truth, output = diff_segments(excerpt(sample.truth), excerpt(sample.output))
    return {"id": sample.id, "prompt": excerpt(sample.prompt or ""), "truth": truth, "output": output, "scores": scores}


def block_view(block: Block, report: ReportContext) -> dict[str, Any]:
    """A block as the template needs it: plain strings (masked where sensitive) and geometry."""
    if isinstance(block, LinePlot):
        return {"kind": "plot", "title": block.title, "x_label": block.x_label, "y_label": block.y_label,
                "geometry": svg.line_plot(block), "legend": len(block.series) > 1}
    if isinstance(block, Histogram):
        return {"kind": "histogram", "title": block.title, "x_label": block.x_label, "y_label": "count",
                "geometry": svg.histogram(block)}
    if isinstance(block, Table):
        return {"kind": "table", "title": block.title, "columns": block.columns,
                "rows": [[report.text(cell) for cell in row] for row in block.rows]}
    if isinstance(block, Comparison):
        return {"kind": "comparison", "title": block.title, "truth_label": block.truth_label,
                "output_label": block.output_label, "samples": [compared_view(s, report) for s in block.samples]}
    if isinstance(block, Text):
        return {"kind": "text", "text": report.scrub(block.text)}
    if isinstance(block, ImageGrid):
        return {"kind": "images", "title": block.title,
                "images": [{"caption": report.scrub(image.caption), "redacted": report.redact,
                            "geometry": None if report.redact else svg.image(image.pixels)} for image in block.images]}
    if isinstance(block, HeatMap):
        return {"kind": "heatmap", "title": block.title, "geometry": svg.heat_map(block)}
    raise TypeError(f"not a report block: {type(block).__name__}")


def section_view(section: Section, report: ReportContext) -> dict[str, Any]:
    return {"title": section.title, "description": section.description,
            "blocks": [block_view(b, report) for b in section.blocks]}


class HtmlReporter:
    """report.html: a self-contained page (opens offline) with gates, timings and each method's plots."""

    filename = "report.html"

    def write(self, report: ReportContext) -> Path:
        evaluations = [{"result": e, "spec": report.evaluation_spec(e.id),
                        "sections": [section_view(s, report) for s in report.sections(e)]}
                       for e in report.run.evaluations]
        env = templates(autoescape=True)
        env.filters["scrub"] = report.scrub
        page = env.get_template("html/report.html.j2").render(
            run=report.run, evaluations=evaluations, redact=report.redact, gates=gate_rows(report.run),
            across_seeds=[section_view(s, report) for s in across_seeds(report.run)],
            model_plots=model_plots(report))
        path = report.out_dir / self.filename
        write_text(path, page)
        return path


def model_plots(report: ReportContext) -> dict[str, dict[str, Any]]:
    """A training-loss curve for each model memeval trained (recipes)."""
    plots = {}
    for name, identity in report.run.models.items():
        curve = identity.get("training", {}).get("loss_curve") if isinstance(identity.get("training"), dict) else None
        if curve:
            epochs = [float(e) for e in range(1, len(curve) + 1)]
            plot = LinePlot("Training loss", "epoch", "mean token NLL", [Series("training loss", epochs, curve)],
                            markers=len(curve) <= 30)
            plots[name] = block_view(plot, report)
    return plots


def gate_rows(run: RunResult) -> list[dict[str, Any]]:
    rows = []
    for evaluation in run.evaluations:
        for gate in evaluation.gates:
            rows.append({"evaluation": evaluation.id, "gate": gate, "metric": evaluation.metric(gate.metric)})
    return rows


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("html", HtmlReporter)
