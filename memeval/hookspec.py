"""Every memeval hook, grouped by phase, in the order a run calls them.

Plugins implement hooks with `@memeval.hookimpl` and are found three ways: the builtins in
`memeval.plugins.BUILTIN_PLUGINS`, the `memeval` entry-point group (the built-in methods in
`memeval_plugins` register there exactly as a third-party package would), and `-p NAME` on the
command line. `-p no:NAME` blocks one. Call hooks with keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from memeval.blocks import Section
    from memeval.collect import Item
    from memeval.config import Config
    from memeval.method import Context, Method
    from memeval.registry import Registry
    from memeval.results import EvaluationResult, Records, RunResult
    from memeval.runner import Session

hookspec = pluggy.HookspecMarker("memeval")

# -- setup ---------------------------------------------------------------------------------


@hookspec
def memeval_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to `memeval run`. Called once at start-up,
    before the command line is parsed; read the values later from `config.options`."""


@hookspec
def memeval_configure(config: Config) -> None:
    """Called after the command line is parsed and every plugin is registered. Use it to read
    options and set up state that lives for the whole process."""


@hookspec
def memeval_unconfigure(config: Config) -> None:
    """Called before the process exits, after `memeval_sessionfinish`; always runs."""


# -- registration --------------------------------------------------------------------------


@hookspec
def memeval_register(registry: Registry) -> None:
    """Add methods, model adapters, dataset loaders and reporters to the registry.

    `registry.add_method(cls)`, `registry.add_adapter(cls)`, `registry.add_loader(name, fn)`,
    `registry.add_reporter(name, cls)` (a class whose `write(report)` writes one file; a suite asks
    for it by name in `report: {formats: [...]}`), `registry.add_trainer(name, trainer)`. The registry remembers which plugin added what, so
    `memeval list` can say it."""


# -- collection ----------------------------------------------------------------------------


@hookspec
def memeval_collection_modifyitems(session: Session, items: list[Item]) -> None:
    """Filter or reorder the collected evaluation items in place (as pytest's hook of the same
    name). Runs after `-k` selection."""


# -- running -------------------------------------------------------------------------------


@hookspec
def memeval_evaluation_start(item: Item) -> None:
    """An evaluation is about to run."""


@hookspec(firstresult=True)
def memeval_run_evaluation(item: Item, context: Context) -> EvaluationResult | None:
    """Run one evaluation and return its result (records already streamed out through
    `context.emit`). The first non-None result wins: an executor plugin that runs methods
    elsewhere implements this with `tryfirst=True`; the local executor is the fallback."""


@hookspec
def memeval_evaluation_finish(item: Item, result: EvaluationResult) -> None:
    """An evaluation finished (passed, failed its gates or errored); `result` holds its metrics
    and gate verdicts."""


# -- reporting -----------------------------------------------------------------------------


@hookspec
def memeval_report_sections(evaluation: EvaluationResult, records: Records,
                            method: type[Method] | None) -> list[Section] | None:
    """Sections added to an evaluation's part of the HTML and Markdown reports: plots, tables,
    samples (the blocks of `memeval.api`). `method` is the evaluation's method class (None when it
    is not installed). A method's own sections come from `Method.report_sections`, which the core
    calls through this hook; implement the hook to add sections to other plugins' evaluations.

    Build sections from what the run kept (`evaluation.metrics`, `evaluation.artifacts`, the
    streamed `records`). Also called by `memeval report`, with no model loaded."""


@hookspec
def memeval_sessionfinish(session: Session, result: RunResult, exitstatus: int) -> None:
    """The run is over, or was interrupted. Always runs. The builtin `reports` plugin writes the
    reports the suite asks for here (trylast); state a plugin keeps for the session goes in
    `session.stash`."""
