"""Builtin `terminal` reporter: a pytest-like account of the run on stdout."""

from __future__ import annotations

import sys

from memeval import hookimpl
from memeval.formatting import interval, metric_text, number
from memeval.registry import Registry
from memeval.results import EvaluationResult, RunResult

DEFAULT_METRICS_SHOWN = 4  # of an evaluation without gates, at the default verbosity
MARKS = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR"}


def _write(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


class TerminalReporter:
    """A line per evaluation and a summary line on stdout, as pytest prints them.

    Registered as the plugin `terminalreporter` in `memeval_configure`."""

    def __init__(self, verbosity: int):
        self.verbosity = verbosity

    @hookimpl(trylast=True)
    def memeval_collection_modifyitems(self, session, items) -> None:
        if self.verbosity < 0:
            return
        suite = session.suite.spec
        _write(f"=== memeval: suite {suite.suite!r} ({session.suite.path}), {len(items)} evaluations, "
               f"seed {session.seed} ===")

    @hookimpl
    def memeval_evaluation_finish(self, item, result: EvaluationResult) -> None:
        if self.verbosity < 0 and result.status == "passed":
            return
        setup = f", model setup {result.setup_seconds:.1f}s" if result.setup_seconds >= 0.5 else ""
        _write(f"{MARKS[result.status]:7} {result.id} ({result.method}, n={result.n_samples}, "
               f"{result.seconds:.1f}s{setup})")
        if self.verbosity >= 0:
            shown = self.metrics_to_show(result)
            for metric in shown:
                _write(f"    {metric_text(metric)}")
            if len(shown) < len(result.metrics):
                _write(f"    ({len(result.metrics) - len(shown)} more metrics: -v shows them, run.json has them)")
        for gate in result.gates:
            if gate.errored:
                _write(f"    gate ERROR: {gate.metric} {gate.rule}: {gate.message}")
            elif not gate.passed:
                _write(f"    gate FAILED: {gate.message}")
            elif self.verbosity > 0:
                _write(f"    gate passed: {gate.metric} {gate.rule} (value {number(gate.value)})")
        for warning in result.warnings:
            _write(f"    warning: {warning}")
        if result.error:
            error = result.error.rstrip()
            if self.verbosity <= 0:  # the exception itself; the traceback with -v (and in run.json)
                error = error.splitlines()[-1] + "  (-v shows the traceback)"
            _write("    " + error.replace("\n", "\n    "))

    def metrics_to_show(self, result: EvaluationResult) -> list:
        """All with -v; else the gated ones, or the first few of an evaluation without gates."""
        if self.verbosity > 0:
            return result.metrics
        gated = {g.metric for g in result.gates}
        if gated:
            return [m for m in result.metrics if m.name in gated]
        return result.metrics[:DEFAULT_METRICS_SHOWN]

    @hookimpl
    def memeval_sessionfinish(self, session, result: RunResult, exitstatus: int) -> None:
        if result.aggregates and self.verbosity >= 0:
            _write("--- across seeds (mean [Student-t CI] over the seeds of each matrix cell) ---")
            for group in result.aggregates:
                _write(f"{group['id']} (seeds {', '.join(map(str, group['seeds']))})")
                for m in group["metrics"]:
                    _write(f"    {m['name']}={number(m['mean'])} {interval(m['ci_low'], m['ci_high'])}".rstrip())
        counts: dict[str, int] = {}
        for evaluation in result.evaluations:
            counts[evaluation.status] = counts.get(evaluation.status, 0) + 1
        verdict = result.verdict()
        parts = [f"{n} {status}" for status, n in counts.items()] or ["no evaluations ran"]
        parts.append(f"{verdict['passed']}/{verdict['gates']} gates passed")
        if verdict["errored"]:
            parts.append(f"{verdict['errored']} not judged (evaluation errored)")
        if result.status == "interrupted":
            parts.append("interrupted")
        if result.baseline is not None:
            parts.append(f"{result.baseline['regressions']} regression(s) against the baseline")
        _write(f"=== {verdict['label']}: {', '.join(parts)} in {result.seconds:.1f}s; run directory "
               f"{session.out_dir} ===")


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("terminal", TerminalReporter)


@hookimpl
def memeval_configure(config) -> None:
    if not getattr(config.options, "json", False):  # `run --json`: stdout holds the JSON alone
        config.pluginmanager.register(TerminalReporter(config.verbosity), "terminalreporter")


@hookimpl
def memeval_unconfigure(config) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        config.pluginmanager.unregister(reporter)
