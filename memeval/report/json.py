"""Builtin `json` reporter: writes run.json (the versioned result schema) into the run directory."""

from __future__ import annotations

from pathlib import Path

from memeval import hookimpl
from memeval.registry import Registry
from memeval.report.base import ReportContext


class JsonReporter:
    """run.json: suite, resolved config, model identities, environment, metrics, gates, timings."""

    filename = "run.json"

    def write(self, report: ReportContext) -> Path:
        path = report.out_dir / self.filename
        report.run.write(path)
        return path


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("json", JsonReporter)
