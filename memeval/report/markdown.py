"""Builtin `markdown` reporter: `summary.md` (gates, metrics, each method's tables), also appended
to `$GITHUB_STEP_SUMMARY` when that variable is set, so a CI job page shows the verdicts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from memeval import hookimpl
from memeval.blocks import Comparison, HeatMap, Section, Sensitive, Table
from memeval.files import write_text
from memeval.formatting import ci_text
from memeval.registry import Registry
from memeval.report.base import ReportContext, across_seeds, format_value, templates

MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, one line."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\s+", " ", MARKDOWN_SPECIAL.sub(r"\\\1", text)).strip()


class Escaped(str):
    """Markdown text already escaped (or made by memeval from numbers): printed as it is."""


def markdown_environment(report: ReportContext) -> Any:
    """The Markdown templates' environment: every printed value is escaped unless a filter already
    did, so a field of a crafted run.json (a status, a verdict, an exit code) cannot inject markup."""
    env = templates(autoescape=False)
    env.finalize = lambda value: value if isinstance(value, Escaped) else md_escape(value)
    env.filters["md"] = lambda value: Escaped(md_escape(value))
    env.filters["num"] = lambda value: Escaped(format_value(value) if _is_number(value) else md_escape(format_value(value)))
    env.filters["ci"] = lambda metric: Escaped(md_escape(ci_text(metric)))
    env.filters["scrub"] = report.scrub
    return env


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def tables(report: ReportContext, sections: list[Section]) -> list[dict[str, Any]]:
    """The tabular part of report sections (plots stay in the HTML report)."""
    out = []
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Table):
                out.append({"title": f"{section.title}: {block.title}".rstrip(": "), "columns": block.columns,
                            "rows": [[report.text(c) for c in row] for row in block.rows]})
            elif isinstance(block, HeatMap):
                out.append({"title": f"{section.title}: {block.title}", "columns": ["", *block.column_labels],
                            "rows": [[label, *(report.text(None if v is None else round(v, 3)) for v in row)]
                                     for label, row in zip(block.row_labels, block.values, strict=True)]})
            elif isinstance(block, Comparison):
                scores = list(dict.fromkeys(k for s in block.samples for k in s.scores))
                rows = [[s.id, report.text(Sensitive(s.truth)), report.text(Sensitive(s.output)),
                         *(report.text(s.scores.get(k)) for k in scores)] for s in block.samples]
                out.append({"title": f"{section.title}: {block.title}", "rows": rows,
                            "columns": ["id", block.truth_label, block.output_label, *scores]})
    return out


class MarkdownReporter:
    """summary.md: gates, metrics and method tables in GitHub Markdown (appended to $GITHUB_STEP_SUMMARY)."""

    filename = "summary.md"

    def write(self, report: ReportContext) -> Path:
        env = markdown_environment(report)
        evaluations = [{"result": e, "tables": tables(report, report.sections(e))} for e in report.run.evaluations]
        text = env.get_template("markdown/summary.md.j2").render(
            run=report.run, evaluations=evaluations, redact=report.redact,
            across_seeds=tables(report, across_seeds(report.run)))
        path = report.out_dir / self.filename
        write_text(path, text)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return path


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("markdown", MarkdownReporter)
