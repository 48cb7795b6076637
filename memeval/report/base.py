"""What every file reporter shares: the run being reported, its plugin sections, the templates.

Reporters render a `RunResult` (live at the end of a run, or loaded from `run.json` by
`memeval report`); they never compute metrics. A reporter registered with `registry.add_reporter`
that has a `write(report: ReportContext) -> Path` method can be asked for by name in a suite's
`report:` block and by `memeval report --format`.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from memeval.report.sections import Records, Section, Sensitive, Text
from memeval.results import EvaluationResult, Metric, RunResult

FILE_FORMATS = ("json", "html", "markdown", "junit")


@dataclass
class ReportContext:
    run: RunResult
    run_dir: Path
    redact: bool
    hook: Any  # the plugin manager's hook relay, asked for sections
    out_dir: Path | None = None  # where reports go (default: the run directory)
    _sections: dict[str, list[Section]] = field(default_factory=dict)

    @classmethod
    def of_session(cls, session: Any, result: RunResult) -> ReportContext:
        """One context per session, so HTML and Markdown share the sections they ask plugins for."""
        if session.report_context is None:
            session.report_context = cls(result, session.out_dir, session.suite.spec.report.redact,
                                         session.config.hook)
        return session.report_context

    def __post_init__(self) -> None:
        self.out_dir = self.out_dir or self.run_dir

    def records(self, evaluation: EvaluationResult) -> Records:
        return Records(self.run_dir / evaluation.records_path if evaluation.records_path else None)

    def sections(self, evaluation: EvaluationResult) -> list[Section]:
        """Every plugin's sections for one evaluation. A plugin that fails gets an error note in
        its place instead of taking the whole report down."""
        if evaluation.id not in self._sections:
            found: list[Section] = []
            for impl in reversed(self.hook.memeval_report_sections.get_hookimpls()):
                try:
                    found += impl.function(evaluation=evaluation, records=self.records(evaluation)) or []
                except Exception:
                    found.append(Section(f"report section of plugin {impl.plugin_name!r} failed",
                                         [Text(traceback.format_exc(limit=3))]))
            self._sections[evaluation.id] = found
        return self._sections[evaluation.id]

    def evaluation_spec(self, evaluation_id: str) -> dict[str, Any]:
        specs = self.run.config.get("suite", {}).get("evaluations", [])
        return next((s for s in specs if s.get("id") == evaluation_id), {})

    def text(self, value: Any) -> str:
        """A cell's text: sensitive text masked under redaction."""
        if isinstance(value, Sensitive):
            return value.masked() if self.redact else value.text
        return format_value(value)


def write_if_asked(name: str, reporter: type, session: Any, result: RunResult) -> None:
    """At the end of a run: write `reporter`'s file when the suite's `report:` asks for `name`."""
    if name in session.suite.spec.report.formats():
        reporter().write(ReportContext.of_session(session, result))


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def format_ci(metric: Metric) -> str:
    if metric.ci_low is None or metric.ci_high is None:
        return ""
    level = f"{metric.ci_level:.0%} " if metric.ci_level else ""
    return f"{level}[{format_value(metric.ci_low)}, {format_value(metric.ci_high)}]"


def direction(metric: Metric) -> str:
    return {True: "higher = more memorization", False: "lower = more memorization",
            None: "no direction"}[metric.higher_is_worse]


def templates(autoescape: bool) -> jinja2.Environment:
    import memeval_reports

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(memeval_reports.__file__).parent),
                             autoescape=autoescape, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = format_value
    env.filters["ci"] = format_ci
    env.filters["direction"] = direction
    return env
