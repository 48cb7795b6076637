"""What every file reporter shares: the run being reported, its plugin sections, the templates.

Reporters render a `RunResult` (live at the end of a run, or loaded from `run.json` by
`memeval report`); they never compute metrics. A reporter registered with `registry.add_reporter`
that has a `write(report: ReportContext) -> Path` method can be asked for by name in a suite's
`report: {formats: [...]}` and by `memeval report --format`; this module (the builtin plugin
`reports`) writes the asked-for ones at the end of every run.
"""

from __future__ import annotations

import re
import secrets
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from memeval import hookimpl
from memeval.blocks import LinePlot, Section, Sensitive, Series, Table, Text
from memeval.errors import Failures, UsageError
from memeval.formatting import ci_text, number
from memeval.method import Method
from memeval.registry import Registry
from memeval.results import EvaluationResult, Metric, Records, RunDir, RunResult
from memeval.stash import StashKey

TRACEBACK_HEAD = "Traceback (most recent call last)"
ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning|Failure))\b")
QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
REPORT_CONTEXT = StashKey["ReportContext"]()  # in the session's stash once the reports are written


@dataclass
class ReportContext:
    """One run being reported: every file reporter of a run renders from the same context, so they
    share the sections plugins contribute (asked for once per evaluation)."""

    run: RunResult
    run_dir: RunDir
    redact: bool
    hook: Any           # the plugin manager's hook relay, asked for sections
    registry: Registry  # method classes by name (their `report_sections`) and the reporters
    out_dir: Path | None = None  # where reports go (default: the run directory)
    _sections: dict[str, list[Section]] = field(default_factory=dict)
    # The key of the keyed hashes in redacted text: made per rendering, never written anywhere.
    redaction_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        self.out_dir = self.out_dir or self.run_dir.directory

    def records(self, evaluation: EvaluationResult) -> Records:
        return self.run_dir.records(evaluation)

    def sections(self, evaluation: EvaluationResult) -> list[Section]:
        """Every plugin's sections for one evaluation (its method's first). A plugin that fails
        gets an error note in its place instead of taking the whole report down."""
        if evaluation.id not in self._sections:
            method = self.registry.get("method", evaluation.method) \
                if evaluation.method in self.registry.names("method") else None
            found: list[Section] = []
            for impl in reversed(self.hook.memeval_report_sections.get_hookimpls()):
                given = {"evaluation": evaluation, "records": self.records(evaluation), "method": method}
                try:
                    found += impl.function(**{name: given[name] for name in impl.argnames}) or []
                except Exception:
                    found.append(Section(f"report section of plugin {impl.plugin_name!r} failed",
                                         [Text(traceback.format_exc(limit=3))]))
            self._sections[evaluation.id] = found
        return self._sections[evaluation.id]

    def evaluation_spec(self, evaluation_id: str) -> dict[str, Any]:
        specs = self.run.config.get("suite", {}).get("evaluations", [])
        return next((s for s in specs if s.get("id") == evaluation_id), {})

    def text(self, value: Any) -> str:
        """A cell's text: sensitive text masked under redaction, any text cut to an excerpt."""
        if isinstance(value, Sensitive):
            return self.mask(value.text) if self.redact else excerpt(value.text)
        return excerpt(format_value(value))

    def mask(self, text: str) -> str:
        return Sensitive(text).masked(self.redaction_key)

    def scrub(self, text: str | None) -> str:
        """Free text that sample text can reach (errors, tracebacks, warnings), as a redacted report
        may show it: an error keeps its exception type and loses its message; in any other text,
        every quoted span is masked. Unchanged without redaction."""
        if not text or not self.redact:
            return text or ""
        last = text.strip().splitlines()[-1]
        if TRACEBACK_HEAD in text or ERROR_LINE.match(last):
            kind = ERROR_LINE.match(last)
            return f"{kind.group(1) if kind else 'error'}: [message and traceback redacted: {len(text)} chars]"
        return QUOTED.sub(lambda m: self.mask(m.group(0)[1:-1]), text)


def across_seeds(run: RunResult) -> list[Section]:
    """The matrix cells that differ only by seed, aggregated: a table of each metric's mean and
    CI over the seeds, and each metric drawn against every numeric matrix parameter, one line per
    evaluation of the suite (e.g. per training method)."""
    if not run.aggregates:
        return []
    rows = [[a["id"], m["name"], m["mean"], m["ci_low"], m["ci_high"], m["n"], a.get("errored", 0)]
            for a in run.aggregates for m in a["metrics"]]
    table = Table(["cells", "metric", "mean over seeds", "CI low", "CI high", "seeds", "errored"], rows)
    return [Section("Across seeds", [table, *_parameter_plots(run.aggregates)],
                    "Means over the seeds of each matrix cell, with a Student-t CI (seeds as replicates).")]


def _parameter_plots(aggregates: list[dict[str, Any]]) -> list[LinePlot]:
    plots = []
    for method in dict.fromkeys(a["method"] for a in aggregates):
        same = [a for a in aggregates if a["method"] == method]
        numeric = [k for k in dict.fromkeys(k for a in same for k in a["matrix"])
                   if all(isinstance(a["matrix"].get(k), int | float) and not isinstance(a["matrix"].get(k), bool)
                          for a in same)]
        for key in numeric:
            for metric in dict.fromkeys(m["name"] for a in same for m in a["metrics"]):
                series = _series_along(same, key, metric)
                if any(len(s.x) > 1 for s in series):
                    plots.append(LinePlot(f"{metric} against {key}", key, metric, series, markers=True))
    return plots


def _series_along(aggregates: list[dict[str, Any]], key: str, metric: str) -> list[Series]:
    """One line per evaluation (and per value of the other matrix parameters)."""
    lines: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for a in aggregates:
        found = next((m for m in a["metrics"] if m["name"] == metric), None)
        if found is None:
            continue
        others = ",".join(f"{k}={v}" for k, v in a["matrix"].items() if k != key)
        lines.setdefault(a["evaluation"] + (f" [{others}]" if others else ""), []).append((a["matrix"][key], found))
    series = []
    for name, points in lines.items():
        points.sort(key=lambda p: p[0])
        bands = all(p[1]["ci_low"] is not None for p in points)
        series.append(Series(name, [float(x) for x, _ in points], [m["mean"] for _, m in points],
                             [m["ci_low"] for _, m in points] if bands else None,
                             [m["ci_high"] for _, m in points] if bands else None))
    return series


def file_reporter(registry: Registry, name: str) -> Any:
    """The reporter class registered as `name`, which must write a file (`write(report)`)."""
    cls = registry.get("reporter", name)
    if not callable(getattr(cls, "write", None)):
        raise UsageError(f"reporter {name!r} writes no file (it reports on the terminal)")
    return cls


def write_reports(report: ReportContext, formats: list[str]) -> list[Path]:
    """Write each asked-for report, then run.json. Every reporter gets its turn, so a failing one
    never costs the results (`memeval report`, `compare` and `--baseline` read run.json); their
    failures are raised together after the last has written. run.json goes last so that a run
    killed while reporting leaves none saying it completed."""
    written, failures = [], []
    for name in sorted(dict.fromkeys(["json", *formats]), key=lambda n: n == "json"):
        try:
            written.append(file_reporter(report.registry, name)().write(report))
        except Exception as exc:  # noqa: PERF203 - each reporter on its own
            failures.append((f"reporter {name!r}", exc))
    if failures:
        raise Failures(failures)
    return written


@hookimpl(trylast=True)  # after the terminal's summary line, which must show even if a reporter fails
def memeval_sessionfinish(session: Any, result: RunResult, exitstatus: int) -> None:
    report = ReportContext(result, RunDir.at(session.out_dir), session.suite.spec.report.redact,
                           session.config.hook, session.config.registry)
    session.stash[REPORT_CONTEXT] = report
    write_reports(report, session.suite.spec.report.formats)


@hookimpl
def memeval_report_sections(evaluation: EvaluationResult, records: Records,
                            method: type[Method] | None) -> list[Section] | None:
    """A method's own sections come from its `report_sections` classmethod."""
    return method.report_sections(evaluation, records) if method is not None else None


EXCERPT_CHARS = 2000  # of any one text a report shows; the records keep all of it


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text`, or its first `limit` characters and its length: a report stays readable (and small)
    when a record holds megabytes."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [{len(text):,} characters; the first {limit:,} shown]"


def format_value(value: Any) -> str:
    """A table cell's text: numbers as everywhere else, yes/no for booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or isinstance(value, float):
        return number(value)
    return str(value)


def direction(metric: Metric) -> str:
    return {True: "higher = more memorization", False: "lower = more memorization",
            None: "no direction"}[metric.higher_is_worse]


def templates(autoescape: bool) -> jinja2.Environment:
    import memeval_reports

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(memeval_reports.__file__).parent),
                             autoescape=autoescape, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = format_value
    env.filters["ci"] = ci_text
    env.filters["direction"] = direction
    env.filters["scrub"] = lambda text: text  # replaced by each reporter with its context's scrub
    return env
