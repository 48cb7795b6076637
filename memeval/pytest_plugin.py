"""pytest plugin: memeval suites as tests, one test item per gate.

Registered through the `pytest11` entry point, so pytest loads it in every session of every
project that installs memeval. It stays inert unless asked: importing it imports nothing of
memeval's runner (no torch), and it collects a `.yaml`/`.yml` file only when the file was named on
the command line or its name matches the ini option `memeval_suite_files` (glob patterns, like
`python_files`; empty by default), and only when the file is a memeval suite (a top-level
`memeval:` key).

Node tree: the suite file, one collector per evaluation (named by its id, so `-k canary-loss`
selects it), one item per gate (`loss_mean<=1`); an evaluation without gates is a single item
named by its id. The first item of a suite to run starts one memeval run (`memeval.runner.
run_suite`) of the evaluations that still have selected items, in suite order; every item then
reads its verdict from that run. A gate that fails is a test failure that shows the metric, its
CI and the threshold; an evaluation that errored makes its items errors (at setup, as a failing
fixture would).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from memeval import hookimpl  # the package's __init__: pluggy and a version lookup, nothing heavy
from memeval.formatting import number
from memeval.options import CACHE_MODES, model_override, positive_int, seed

if TYPE_CHECKING:
    from memeval.collect import Item
    from memeval.config import Config
    from memeval.results import EvaluationResult, GateVerdict, Metric, RunResult
    from memeval.suite import GateSpec
    from memeval.suite import SuiteFile as MemevalSuite

SUITE_SUFFIXES = (".yaml", ".yml")
_TOP_LEVEL_MEMEVAL = re.compile(r"""^(memeval|"memeval"|'memeval')[ \t]*:""", re.MULTILINE)


class MemevalWarning(UserWarning):
    """A warning an evaluation recorded (shown in pytest's warnings summary)."""


# -- options -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memeval", "memeval suites (one test per gate)")
    group.addoption("--memeval-out", metavar="DIR",
                    help="run directory (run.json, records/); DIR/<suite stem> for several suites "
                         "(default: <pytest basetemp>/memeval/<suite stem>)")
    group.addoption("--memeval-cache", choices=CACHE_MODES, default="use",
                    help="model output cache: use (default), refresh, off, only (a miss is an error)")
    group.addoption("--memeval-cache-dir", metavar="DIR",
                    help="cache directory (default $MEMEVAL_CACHE_DIR or ~/.cache/memeval)")
    group.addoption("--memeval-seed", type=seed, metavar="N", help="override the suites' seed")
    group.addoption("--memeval-limit", type=positive_int, metavar="N",
                    help="use only the first N samples of each dataset")
    group.addoption("--memeval-baseline", metavar="RUN_DIR",
                    help="a saved run of the same suite: baseline-relative gates compare against it")
    group.addoption("--memeval-model", action="append", type=model_override, default=[],
                    metavar="NAME=PATH", help="point the suites' model NAME at the hf-causal checkpoint PATH")
    parser.addini("memeval_suite_files", type="args", default=[],
                  help="glob patterns of YAML files collected as memeval suites besides those named on the "
                       "command line (default: none)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "memeval: a gate of a memeval suite (added by the memeval plugin)")
    config.stash[_STATE] = _State(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


# -- collection ----------------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SuiteFile | None:
    if file_path.suffix not in SUITE_SUFFIXES:
        return None
    if not parent.session.isinitpath(file_path) and not _matches(file_path, parent.config.getini("memeval_suite_files")):
        return None
    if not is_suite(file_path):
        return None
    return SuiteFile.from_parent(parent, path=file_path)


def _matches(path: Path, patterns: list[str]) -> bool:
    """pytest's `python_files` rule: a pattern without a slash matches the file name, one with a
    slash the end of the path."""
    for pattern in patterns:
        if "/" in pattern or os.sep in pattern:
            if fnmatch.fnmatch(str(path), f"*{os.sep}{pattern.replace('/', os.sep)}"):
                return True
        elif fnmatch.fnmatch(path.name, pattern):
            return True
    return False


def is_suite(path: Path) -> bool:
    """A memeval suite has a top-level `memeval:` key. A cheap look at the text: a file that is not
    valid YAML but has that key is collected, so that its error is reported."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if _TOP_LEVEL_MEMEVAL.search(text):
        return True
    if text.lstrip().startswith("{") and "memeval" in text:  # a flow-style mapping
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return False
        return isinstance(data, dict) and "memeval" in data
    return False


def _suite_arg(path: Path) -> str:
    """The suite path as memeval shows it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class SuiteFile(pytest.File):
    """A memeval suite; its children are its evaluations."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_marker("memeval")
        self.suite: MemevalSuite | None = None
        self.outcome: _Outcome | None = None
        self._warned: set[str] = set()

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        from memeval.runner import load_and_collect

        config = self.config.stash[_STATE].memeval_config()
        self.suite, items = load_and_collect(config, _suite_arg(self.path))
        self.extra_keyword_matches.add(self.suite.spec.suite)
        for item in items:
            if item.spec.gates:
                yield Evaluation.from_parent(self, name=item.id, evaluation=item)
            else:
                yield EvaluationItem.from_parent(self, name=item.id, evaluation=item)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        """A suite error is memeval's message (file:line: field: what is wrong), not a traceback."""
        from memeval.errors import UsageError
        from memeval.suite import SuiteErrors

        if isinstance(excinfo.value, UsageError | SuiteErrors):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def run(self) -> _Outcome:
        """Run the suite's selected evaluations once, in one memeval session."""
        if self.outcome is None:
            self.outcome = self.config.stash[_STATE].run(self)
        return self.outcome

    def warn_once(self, result: EvaluationResult, line: int | None) -> None:
        if result.id in self._warned:
            return
        self._warned.add(result.id)
        for message in result.warnings:
            warnings.warn_explicit(MemevalWarning(f"{result.id}: {message}"), MemevalWarning,
                                   _suite_arg(self.path), line or 1)


def _keywords(item: Item) -> set[str]:
    return {k for k in (item.spec.method, item.spec.model, item.spec.dataset) if k}


class Evaluation(pytest.Collector):
    """One evaluation of a suite; its children are its gates."""

    def __init__(self, *, evaluation: Item, **kwargs: Any):
        super().__init__(**kwargs)
        self.evaluation = evaluation
        self.extra_keyword_matches.update(_keywords(evaluation))

    def collect(self) -> Iterator[pytest.Item]:
        taken: set[str] = set()
        for index, gate in enumerate(self.evaluation.spec.gates):
            name = gate_name(gate)
            if name in taken:
                name = f"{name}@{index}"
            taken.add(name)
            yield GateItem.from_parent(self, name=name, evaluation=self.evaluation, gate_index=index)


def gate_name(gate: GateSpec) -> str:
    """`loss_mean<=1`, `best_auc>=0.9`, `0.3<=loss_mean<=1`, `loss_mean:increase<=0.01`."""
    if gate.min is not None and gate.max is not None:
        name = f"{gate.min:g}<={gate.metric}<={gate.max:g}"
    elif gate.min is not None:
        name = f"{gate.metric}>={gate.min:g}"
    elif gate.max is not None:
        name = f"{gate.metric}<={gate.max:g}"
    else:
        name = gate.metric
    relative = [f"{what}<={limit:g}" for what, limit in (("increase", gate.max_increase),
                                                        ("decrease", gate.max_decrease)) if limit is not None]
    return f"{name}:{','.join(relative)}" if relative else name


# -- running -------------------------------------------------------------------------------------


class MemevalItem(pytest.Item):
    """Shared by gate items and gate-less evaluations: setup makes sure the suite ran, and fails
    (a pytest error, as a failing fixture) when this evaluation has no result or errored."""

    def __init__(self, *, evaluation: Item, **kwargs: Any):
        super().__init__(**kwargs)
        self.evaluation = evaluation
        self.extra_keyword_matches.update(_keywords(evaluation))
        self.result: EvaluationResult | None = None

    @property
    def suite_node(self) -> SuiteFile:
        node = self.getparent(SuiteFile)
        assert node is not None
        return node

    def line(self, *loc: Any) -> int | None:
        return self.evaluation.suite.line_of(("evaluations", self.evaluation.index, *loc))

    def setup(self) -> None:
        outcome = self.suite_node.run()
        result = outcome.results.get(self.evaluation.id)
        if result is None:
            self.user_properties.append(("evaluation", self.evaluation.id))
            pytest.fail(f"memeval stopped the run: {outcome.error}" if outcome.error
                        else f"evaluation {self.evaluation.id!r} did not run", pytrace=False)
        self.result = result
        self.user_properties += self.properties(result) + [("run_dir", str(outcome.out_dir))]
        self.suite_node.warn_once(result, self.line())
        if result.status == "error":
            error = (result.error or "").rstrip()
            last = error.splitlines()[-1] if error else "no error text"
            pytest.fail(f"evaluation {result.id!r} ({result.method}) errored: {last}\n{error}", pytrace=False)

    def properties(self, result: EvaluationResult) -> list[tuple[str, Any]]:
        """JUnit properties: the evaluation and every metric it produced (value and CI), named as
        memeval's own `junit` reporter names them."""
        props: list[tuple[str, Any]] = [("evaluation", result.id), ("method", result.method), ("model", result.model),
                                        ("dataset", result.dataset), ("n_samples", result.n_samples)]
        for metric in result.metrics:
            props.append((f"metric.{metric.name}", metric.value))
            if metric.ci_low is not None and metric.ci_high is not None:
                props += [(f"metric.{metric.name}.ci_low", metric.ci_low),
                          (f"metric.{metric.name}.ci_high", metric.ci_high)]
        return [(k, v) for k, v in props if v is not None]

    def runtest(self) -> None:
        """An evaluation without gates passes when it ran (setup has checked that)."""

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.line()
        return self.path, (line - 1 if line else None), self.evaluation.id


class EvaluationItem(MemevalItem):
    """An evaluation without gates: passes when it ran without error."""


class GateItem(MemevalItem):
    """One gate of an evaluation: fails when memeval's verdict on it is 'failed'."""

    def __init__(self, *, gate_index: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.gate_index = gate_index

    @property
    def verdict(self) -> GateVerdict:
        assert self.result is not None
        return self.result.gates[self.gate_index]

    def properties(self, result: EvaluationResult) -> list[tuple[str, Any]]:
        verdict = result.gates[self.gate_index] if result.status != "error" else None
        if verdict is None:
            return super().properties(result)
        metric = result.metric(verdict.metric)
        props: list[tuple[str, Any]] = [("metric", verdict.metric), ("value", verdict.value), ("rule", verdict.rule)]
        if metric is not None and metric.ci_low is not None and metric.ci_high is not None:
            props += [("ci_low", metric.ci_low), ("ci_high", metric.ci_high)]
        props += [("threshold", verdict.threshold), ("baseline_value", verdict.baseline_value)]
        return [(k, v) for k, v in props if v is not None] + super().properties(result)

    def runtest(self) -> None:
        if not self.verdict.passed:
            raise GateFailed(self.verdict.message or f"{self.verdict.metric}: gate failed")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, GateFailed):
            return self.describe_failure()
        return super().repr_failure(excinfo, style)

    def describe_failure(self) -> str:
        """The verdict's message first (pytest's short summary shows that line), then the metric
        with its CI, the rule, the evaluation's other metrics and where its records are."""
        result, verdict = self.result, self.verdict
        assert result is not None
        metric = result.metric(verdict.metric)
        where = f"{_suite_arg(self.path)}:{self.line('gates', self.gate_index) or '?'}"
        about = ", ".join(f"{k} {v}" for k, v in (("model", result.model), ("dataset", result.dataset)) if v)
        lines = [verdict.message or f"{verdict.metric}: gate failed",
                 f"  evaluation: {result.id} ({result.method}{', ' + about if about else ''}, "
                 f"{result.n_samples} samples)",
                 f"  metric:     {format_metric(metric) if metric is not None else verdict.metric + ' = n/a'}",
                 f"  gate:       {verdict.metric} {verdict.rule}"
                 + (f" against baseline value {number(verdict.baseline_value, 6)}" if verdict.baseline_value is not None
                    else "") + f" ({where})"]
        others = [m for m in result.metrics if m.name != verdict.metric]
        if others:
            lines.append("  other metrics:")
            lines += [f"    {format_metric(m)}" for m in others]
        lines += [f"  warning: {w}" for w in result.warnings]
        outcome = self.suite_node.outcome
        if outcome is not None and result.records_path:
            lines.append(f"  records:    {outcome.out_dir / result.records_path}")
        return "\n".join(lines)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.line("gates", self.gate_index)
        return self.path, (line - 1 if line else None), f"{self.evaluation.id}: gate {self.name}"


class GateFailed(Exception):
    """A gate's verdict was 'failed' (shown by `GateItem.repr_failure`, without a traceback)."""


def format_metric(metric: Metric) -> str:
    """`loss_mean = 0.0643, 95% CI [0.05, 0.08] (bootstrap-percentile(mean), n=12)`."""
    text = f"{metric.name} = {number(metric.value, 6)}"
    if metric.ci_low is not None and metric.ci_high is not None:
        level = f"{metric.ci_level * 100:g}% " if metric.ci_level else ""
        text += f", {level}CI [{number(metric.ci_low, 6)}, {number(metric.ci_high, 6)}]"
    details = [d for d in (metric.ci_method, metric.n is not None and f"n={metric.n}") if d]
    return f"{text} ({', '.join(details)})" if details else text


# -- the memeval side: one config per pytest session, one run per suite -----------------------


@dataclass
class _Outcome:
    """What a suite's run left: results by evaluation id, and why it stopped early, if it did."""

    suite: str
    out_dir: Path
    results: dict[str, EvaluationResult] = field(default_factory=dict)
    run: RunResult | None = None
    exit_code: int | None = None
    error: str | None = None


class _Capture:
    """A memeval plugin, registered for one run: keeps only the evaluations pytest selected and
    collects their results."""

    def __init__(self, selected: set[str], outcome: _Outcome):
        self.selected, self.outcome = selected, outcome

    @hookimpl(tryfirst=True)
    def memeval_collection_modifyitems(self, session: Any, items: list[Item]) -> None:
        items[:] = [item for item in items if item.id in self.selected]

    @hookimpl
    def memeval_evaluation_finish(self, item: Item, result: EvaluationResult) -> None:
        self.outcome.results[result.id] = result

    @hookimpl
    def memeval_sessionfinish(self, session: Any, result: RunResult, exitstatus: int) -> None:
        self.outcome.run = result


class _State:
    def __init__(self, config: pytest.Config):
        self.config = config
        self._memeval: Config | None = None
        self._out_dirs: dict[Path, Path] | None = None
        self.outcomes: list[_Outcome] = []

    def memeval_config(self) -> Config:
        """memeval's Config, built on first use the way `memeval run` builds it (every plugin, its
        options' defaults), less the terminal reporter: pytest reports."""
        if self._memeval is None:
            from memeval.config import Config
            from memeval.plugins import build_registry, make_plugin_manager

            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            pm = make_plugin_manager(["no:terminal"])
            defaults = argparse.ArgumentParser(add_help=False)
            pm.hook.memeval_addoption(parser=defaults)
            options = defaults.parse_known_args([])[0]
            get = self.config.getoption
            loud = get("capture", "fd") == "no"  # with -s, memeval's progress lines are worth seeing
            vars(options).update(command="pytest", suites=[], keyword=None, out=get("memeval_out"),
                                 seed=get("memeval_seed"), limit=get("memeval_limit"), cache=get("memeval_cache"),
                                 cache_dir=get("memeval_cache_dir"), model=get("memeval_model"),
                                 baseline=get("memeval_baseline"), plugins=[],
                                 quiet=0 if loud else 1, verbose=0)
            self._memeval = Config(options=options, pluginmanager=pm, registry=build_registry(pm))
            pm.hook.memeval_configure(config=self._memeval)
        return self._memeval

    def close(self) -> None:
        if self._memeval is not None:
            self._memeval.pluginmanager.hook.memeval_unconfigure(config=self._memeval)
            self._memeval = None

    def out_dir(self, node: SuiteFile) -> Path:
        """Run directories are given out for every suite with selected items at once, as
        `memeval run` gives them out for its suites."""
        if self._out_dirs is None:
            from memeval.results import run_directories

            nodes = list(dict.fromkeys(i.suite_node.path for i in node.session.items if isinstance(i, MemevalItem)))
            paths = [_suite_arg(p) for p in nodes]
            base = self.config.getoption("memeval_out")
            if not base:
                factory = getattr(self.config, "_tmp_path_factory", None)  # the tmp_path plugin's
                root = factory.getbasetemp() / "memeval" if factory is not None else Path(".memeval-pytest")
                dirs = run_directories(paths, str(root)) if len(paths) > 1 else [root / Path(p).stem for p in paths]
            else:
                dirs = run_directories(paths, base)
            self._out_dirs = {node: Path(d).absolute() for node, d in zip(nodes, dirs, strict=True)}
        return self._out_dirs[node.path]

    def run(self, node: SuiteFile) -> _Outcome:
        from memeval.errors import ExitCode, UsageError
        from memeval.runner import run_suite
        from memeval.suite import SuiteErrors

        selected = {i.evaluation.id for i in node.session.items
                    if isinstance(i, MemevalItem) and i.suite_node is node}
        out_dir = self.out_dir(node)
        outcome = _Outcome(suite=_suite_arg(node.path), out_dir=out_dir)
        self.outcomes.append(outcome)
        config = self.memeval_config()
        capture = _Capture(selected, outcome)
        config.pluginmanager.register(capture, name=f"pytest-capture-{len(self.outcomes)}")
        try:
            if out_dir.exists() and not out_dir.is_dir():
                raise UsageError(f"--memeval-out {out_dir}: exists and is not a directory")
            outcome.exit_code = int(run_suite(config, outcome.suite, out_dir))
        except (UsageError, SuiteErrors) as exc:
            outcome.exit_code = int(ExitCode.USAGE_ERROR)
            outcome.error = outcome.run.error if outcome.run is not None and outcome.run.error else str(exc)
        except Exception:  # a memeval or plugin bug: every item of the suite shows it
            outcome.exit_code = int(ExitCode.INTERNAL_ERROR)
            outcome.error = "INTERNAL ERROR (a memeval or plugin bug):\n" + traceback.format_exc()
        finally:
            config.pluginmanager.unregister(capture)
        if outcome.exit_code == ExitCode.INTERRUPTED:
            raise KeyboardInterrupt
        return outcome


_STATE = pytest.StashKey[_State]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if not state or not state.outcomes:
        return
    terminalreporter.write_sep("-", "memeval")
    for outcome in state.outcomes:
        ran = len(outcome.results)
        terminalreporter.write_line(f"{outcome.suite}: {ran} evaluation{'s' * (ran != 1)} ran; "
                                    f"run directory {outcome.out_dir}")
