"""Builtin `json` reporter: writes run.json (the versioned result schema) into the run directory."""

from __future__ import annotations

from memeval import hookimpl
from memeval.registry import Registry
from memeval.results import RunResult


class JsonReporter:
    """run.json: suite, resolved config, model identities, environment, metrics, gates, timings."""

    def write(self, session, result: RunResult) -> None:
        result.write(session.out_dir / "run.json")


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("json", JsonReporter)


@hookimpl
def memeval_sessionfinish(session, result: RunResult, exitstatus: int) -> None:
    if "json" in session.suite.spec.report.formats():
        JsonReporter().write(session, result)
