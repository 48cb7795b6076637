"""Session, fixtures (models and datasets, resolved lazily and once), execution and exit codes.

This module is also the builtin `local` plugin: the in-process, batched executor that implements
`memeval_run_evaluation` when no other executor claims an evaluation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from itertools import islice
from pathlib import Path
from typing import IO, Any

from memeval import __version__, hookimpl
from memeval.cache import OutputCache
from memeval.collect import Item, apply_baseline_override, apply_model_overrides, collect
from memeval.compare import SavedRun, compare_runs, comparison_record
from memeval.config import Config
from memeval.data import iter_samples, rows_to_samples, stream_texts
from memeval.errors import EnvironmentProblem, ExitCode, Failures, UsageError, most_severe
from memeval.files import atomic_writer, environment_problem, locked, remove_partials
from memeval.gates import judge, not_judged
from memeval.hookcall import call_each
from memeval.matrix import aggregate_over_seeds
from memeval.models.base import AdapterContext, CachedCausalLM, CausalLM, ModelAdapter
from memeval.results import RECORDS_DIR, EvaluationResult, Metric, Records, RunDir, RunResult
from memeval.sample import Sample
from memeval.selection import compile_expression
from memeval.stash import Stash
from memeval.suite import SuiteErrors, SuiteFile

PACKAGES = ("memeval", "torch", "transformers", "tokenizers", "datasets", "numpy", "scipy", "pydantic", "pluggy")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class EvaluationContext:
    """The `Context` (memeval.method) the core gives a method: its model and samples, the seed,
    the output cache, and where records, warnings and artifacts go."""

    session: Session
    item: Item
    _records: IO[str] | None = None
    records_file: Path | None = None  # the file `_records` writes; without one, records are kept in memory
    _kept: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    n_records: int = 0
    n_truncated: int = 0  # the most samples any one cut touched

    @property
    def params(self) -> Any:
        return self.item.params

    @property
    def seed(self) -> int:
        return self.item.seed if self.item.seed is not None else self.session.seed

    @property
    def model(self) -> Any:
        return self.session.model(self.item.spec.model) if self.item.spec.model else None

    @property
    def samples(self) -> list[Sample]:
        return self.session.dataset(self.item.spec.dataset) if self.item.spec.dataset else []

    @property
    def cache(self) -> OutputCache:
        return self.session.cache

    @property
    def cache_dir(self) -> Path:
        return self.session.config.cache_dir

    @property
    def batch_size(self) -> int:
        own = getattr(self.params, "batch_size", None)
        if own:
            return own
        model = self.model
        return getattr(getattr(model, "params", None), "batch_size", None) or 16

    @property
    def scored_by_others(self) -> frozenset[Hashable]:
        return self.item.scored_by_others

    def model_named(self, name: str) -> Any:
        return self.session.model(name)

    def dataset_named(self, name: str) -> list[Sample]:
        return self.session.dataset(name)

    def stream_texts(self, name: str) -> Iterator[str]:
        return self.session.stream_texts(name)

    def resolve_path(self, path: str) -> Path:
        return self.session.suite.resolve_path(path)

    def records_of(self, evaluation_id: str, run: str | None = None) -> list[dict[str, Any]]:
        if run is None:
            done = {r.id: r for r in self.session.result.evaluations}
            if evaluation_id not in done or done[evaluation_id].status == "error":
                raise UsageError(f"evaluation {evaluation_id!r} has not run successfully in this session "
                                 f"(deselected with -k, or it failed)")
            return list(self.session.run_dir.records(done[evaluation_id]))
        saved = self.session.suite.saved_run(run)
        match = [e for e in saved.load().evaluations if e.id == evaluation_id]
        if not match or not match[0].records_path:
            raise UsageError(f"run {run!r} has no records of evaluation {evaluation_id!r}")
        return list(saved.records(match[0]))

    def emit(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            if self._records is not None:
                self._records.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
            if self.records_file is None:
                self._kept.append(record)
            self.n_records += 1
        if self._records is not None:
            self._records.flush()

    def emitted(self) -> Sequence[dict[str, Any]]:
        """The records emitted so far: read back from the records file as they are needed (never all
        held), or, where there is no file (a worker), the ones kept in memory."""
        return Records(self.records_file) if self.records_file is not None else self._kept

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def artifact(self, name: str, value: Any) -> None:
        self.artifacts[name] = value

    def truncated(self, count: int, total: int, what: str, requested: bool = False) -> None:
        if not count:
            return
        self.n_truncated = max(self.n_truncated, count)
        message = f"truncated: {count} of {total} {what}"
        if not requested and self.session.suite.spec.on_truncate == "error":
            raise UsageError(f"{message}. A cut changes what is measured, so a gate could pass by accident; "
                             f"set on_truncate: warn in the suite to run with the cut")
        self.warn(message)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Session:
    """One suite's run: resolves models and datasets once, on first use, and runs its items."""

    def __init__(self, config: Config, suite: SuiteFile, out_dir: Path):
        self.config = config
        self.suite = suite
        self.out_dir = out_dir
        self.run_dir = RunDir.at(out_dir)
        self.stash = Stash()  # plugins' state for this session (memeval.stash)
        options = config.options
        self.seed = options.seed if getattr(options, "seed", None) is not None else suite.spec.seed
        self.cache = OutputCache(config.cache_dir, config.cache_mode)
        self._models: dict[str, ModelAdapter | CachedCausalLM] = {}
        self._model_errors: dict[str, BaseException] = {}
        self._datasets: dict[str, list[Sample]] = {}
        self._rows: dict[str, Any] = {}
        self.items: list[Item] = []
        self.current: Item | None = None
        self.result = RunResult(suite={}, config={})

    def log(self, message: str) -> None:
        if self.config.verbosity >= 0:
            print(f"memeval: {message}", file=sys.stderr, flush=True)

    def dataset(self, name: str) -> list[Sample]:
        """The named dataset's samples, loaded once; `--limit` keeps the first N."""
        if name not in self._datasets:
            samples = self._load_samples(name)
            limit = getattr(self.config.options, "limit", None)
            self._datasets[name] = samples[:limit] if limit else samples
        return self._datasets[name]

    def sample_blocks(self, name: str, size: int) -> Iterator[list[Sample]]:
        """The named dataset's samples (after `--limit`) in blocks of `size`, each made from the rows
        when it is needed: the whole dataset is never held, unless another evaluation loaded it."""
        if name in self._datasets:
            loaded = self._datasets[name]
            yield from (loaded[start:start + size] for start in range(0, len(loaded), size))
            return
        samples = iter_samples(self.rows(name), self.suite.spec.datasets[name], self.suite, name, self.seed)
        limit = getattr(self.config.options, "limit", None)
        samples = islice(samples, limit) if limit else samples
        block = list(islice(samples, size))
        if not block:
            raise self.suite.error(("datasets", name), "the dataset is empty (0 rows)")
        while block:
            yield block
            block = list(islice(samples, size))

    def stream_texts(self, name: str) -> Iterator[str]:
        """The texts of a dataset, streamed (for corpora too big to hold as samples)."""
        return stream_texts(self.rows(name), self.suite.spec.datasets[name])

    def rows(self, name: str) -> Any:
        """The named dataset as its loader gives it (for files, a memory-mapped Arrow table), loaded once."""
        if name not in self._rows:
            spec = self.suite.spec.datasets[name]
            try:
                self._rows[name] = self.config.registry.get("loader", spec.loader)(spec, self.suite)
            except UsageError as exc:
                raise exc if exc.file else self.suite.error(("datasets", name), exc.message) from None
        return self._rows[name]

    def _load_samples(self, name: str) -> list[Sample]:
        return rows_to_samples(self.rows(name), self.suite.spec.datasets[name], self.suite, name, self.seed)

    def model(self, name: str) -> ModelAdapter | CachedCausalLM:
        """The named model, built on first use; a model that failed to build fails every user once
        built (as a pytest fixture does), without being built again."""
        if name in self._model_errors:
            raise self._model_errors[name]
        if name not in self._models:
            try:
                self._models[name] = self._build_model(name)
            except Exception as exc:
                self._model_errors[name] = exc
                raise
        return self._models[name]

    def _build_model(self, name: str) -> ModelAdapter | CachedCausalLM:
        spec = self.suite.spec.models[name]
        adapter_cls = self.config.registry.get("adapter", spec.adapter)
        seed = self.suite.model_seeds.get(name, self.seed)  # a matrix cell over `seed` brings its own
        context = AdapterContext(base_dir=self.suite.base_dir, seed=seed, cache=self.cache,
                                 cache_dir=self.config.cache_dir, load_dataset=self._training_data, log=self.log,
                                 trainers=self.config.registry.table("trainer"))
        try:
            adapter = adapter_cls(adapter_cls.Params.model_validate(spec.params), context)
            self.result.models[name] = {**adapter.identity(), **adapter.details()}
        except UsageError as exc:
            raise exc if exc.file else self.suite.error(("models", name), exc.message) from None
        return CachedCausalLM(adapter, self.cache) if isinstance(adapter, CausalLM) else adapter


    def _training_data(self, name: str) -> list[Sample]:
        """Recipes train on the whole dataset: `--limit` only shortens what is evaluated."""
        return self._load_samples(name)

    def close(self) -> None:
        self.cache.close()


# -- the local executor ------------------------------------------------------------------------


@hookimpl(trylast=True)
def memeval_run_evaluation(item: Item, context: EvaluationContext) -> EvaluationResult:
    """Run a map/reduce method in this process: batches of similar size, records streamed out."""
    method = item.method_cls(item.params)
    return map_reduce(item, context, method, unit_blocks(item, context, method))


BLOCK_SAMPLES = 2048  # samples prepared and mapped at a time, for a method that prepares in blocks


def unit_blocks(item: Item, context: EvaluationContext, method: Any) -> Iterator[list[Any]]:
    """The method's units: prepared a block of samples at a time when it `prepares_in_blocks`, else
    all at once. A block that keeps no unit is skipped; an evaluation that keeps none is a usage error."""
    kept = 0
    for units in _prepared(item, context, method):
        if units:
            kept += len(units)
            yield units
        del units
    if not kept:
        reasons = "; ".join(context.warnings) or "the method kept no sample"
        raise UsageError(f"evaluation {item.id!r} has nothing to evaluate ({reasons})")


def _prepared(item: Item, context: EvaluationContext, method: Any) -> Iterator[list[Any]]:
    if not (method.prepares_in_blocks and item.spec.dataset):
        yield method.prepare(context.samples, context)
        return
    blocks = BlockContext(context)
    for samples in context.session.sample_blocks(item.spec.dataset, BLOCK_SAMPLES):
        yield method.prepare(samples, blocks)
    blocks.finish()


NUMBER = re.compile(r"\d+")


class BlockContext:
    """The context `prepare` sees block by block: its cuts (`truncated`) are added up over the blocks
    and reported once when they are done, as one `prepare` of every sample would (one line per kind
    of cut, each number in it the largest any block had); all else is the evaluation's context."""

    def __init__(self, context: EvaluationContext):
        self._context = context
        # (what with its numbers masked, requested) -> [count, total, the largest of each number]
        self._cuts: dict[tuple[str, bool], list[Any]] = {}

    def truncated(self, count: int, total: int, what: str, requested: bool = False) -> None:
        if count and not requested and self._context.session.suite.spec.on_truncate == "error":
            self._context.truncated(count, total, what, requested)  # the usage error, now
        numbers = [int(n) for n in NUMBER.findall(what)]
        cut = self._cuts.setdefault((NUMBER.sub("\0", what), requested), [0, 0, numbers])
        cut[0], cut[1], cut[2] = cut[0] + count, cut[1] + total, list(map(max, cut[2], numbers))

    def finish(self) -> None:
        """Report the cuts of all the blocks."""
        for (template, requested), (count, total, numbers) in self._cuts.items():
            first, *rest = template.split("\0")
            what = first + "".join(f"{n}{part}" for n, part in zip(numbers, rest, strict=True))
            self._context.truncated(count, total, what, requested)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def batches(method: Any, units: list[Any], size: int) -> list[list[int]]:
    """Unit indices in batches of similar size (largest first): how every executor batches `map`."""
    order = sorted(range(len(units)), key=lambda i: method.size(units[i]), reverse=True)
    return [order[start:start + size] for start in range(0, len(order), size)]


def map_size(method: Any, context: EvaluationContext) -> int:
    """Units per `map` call: the batch size, times the batches the method asks for at once."""
    return context.batch_size * max(1, getattr(method, "batches_per_map", 1))


def map_reduce(item: Item, context: EvaluationContext, method: Any, blocks: Iterable[list[Any]]) -> EvaluationResult:
    """`map` over each block of prepared units in this process, records streamed out, then `reduce`
    over them as read back."""
    from tqdm import tqdm

    quiet = context.session.config.verbosity < 0
    n_units = 0
    with tqdm(desc=item.id, unit="sample", file=sys.stderr, disable=quiet, leave=False) as bar:
        for units in blocks:
            for batch in batches(method, units, map_size(method, context)):
                context.emit(method.map([units[i] for i in batch], context))
                bar.update(len(batch))
            n_units += len(units)
            del units
    return reduce(item, context, method, n_units)


def reduce(item: Item, context: EvaluationContext, method: Any, n_units: int) -> EvaluationResult:
    metrics = method.reduce(context.emitted(), context)
    return EvaluationResult(id=item.id, method=item.method_cls.name, model=item.spec.model,
                            dataset=item.spec.dataset, params=item.params.model_dump(mode="json"),
                            n_samples=n_units, metrics=metrics)


# -- running a suite ---------------------------------------------------------------------------


def select(items: list[Item], expression: str | None) -> list[Item]:
    if not expression:
        return items
    matcher = compile_expression(expression)
    return [item for item in items if matcher(item.keywords)]


def load_and_collect(config: Config, path: str) -> tuple[SuiteFile, list[Item]]:
    from memeval.suite import load_suite

    suite = load_suite(path)
    overrides = dict(getattr(config.options, "model", None) or [])
    apply_model_overrides(suite, overrides)
    baseline = getattr(config.options, "baseline", None)
    if baseline is not None:
        ran = SavedRun.load(baseline).run.suite.get("name")
        if ran != suite.spec.suite:
            raise UsageError(f"--baseline {baseline}: a run of suite {ran!r}, not of {suite.spec.suite!r}",
                             file=str(suite.path))
        apply_baseline_override(suite, baseline)
    return suite, collect(suite, config.registry)


def compare_with_baseline(config: Config, session: Session) -> dict[str, Any]:
    """The run against `--baseline`: every shared metric's change, with paired CIs where possible."""
    base = SavedRun.load(config.options.baseline)
    return comparison_record(base, compare_runs(base, SavedRun(session.result, session.run_dir), config.registry))


def run_suite(config: Config, path: str, out_dir: Path) -> ExitCode:
    """Run one suite into `out_dir`; returns the exit code (pytest's meanings)."""
    suite, items = load_and_collect(config, path)
    items = select(items, getattr(config.options, "keyword", None))
    make_run_dir(out_dir)
    with locked(out_dir, blocking=False) as mine:
        if not mine:
            raise EnvironmentProblem(f"run directory {str(out_dir)!r} is in use by another memeval run; wait for it "
                                     f"to finish or choose another --out")
        remove_partials(out_dir)
        remove_partials(out_dir / RECORDS_DIR)
        return _run_session(Session(config, suite, out_dir), items)


def make_run_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EnvironmentProblem(f"--out {str(out_dir)!r} exists and is not a directory; choose another --out")
    try:
        (out_dir / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_problem(exc, "run directory") or exc from None


def _run_session(session: Session, items: list[Item]) -> ExitCode:
    config, suite, result = session.config, session.suite, session.result
    result.suite = {"name": suite.spec.suite, "path": str(suite.path), "description": suite.spec.description,
                    "seed": session.seed}
    result.config = {"suite": suite.spec.model_dump(mode="json", by_alias=True), "options": _options(config),
                     "cache_dir": str(config.cache_dir.resolve()), "cache_mode": config.cache_mode}
    result.environment = environment(suite.base_dir)
    result.started_at = now()
    started = time.perf_counter()
    exit_code = ExitCode.NO_EVALUATIONS if not items else ExitCode.OK
    failure: BaseException | None = None
    suite_order = {item.id: k for k, item in enumerate(items)}  # results keep it, whatever the running order
    try:
        config.hook.memeval_collection_modifyitems(session=session, items=items)
        session.items = items
        for item in items:
            session.current = item
            result.evaluations.append(run_item(session, item))
        session.current = None
        exit_code = _exit_code(result) if items else ExitCode.NO_EVALUATIONS
        result.aggregates = aggregate_over_seeds(result.evaluations)
        result.status = "completed"
        if getattr(config.options, "baseline", None) is not None:
            result.baseline = compare_with_baseline(config, session)
    except KeyboardInterrupt:
        result.status, exit_code = "interrupted", ExitCode.INTERRUPTED
    except (UsageError, SuiteErrors) as exc:
        result.status, exit_code, failure = "error", ExitCode.USAGE_ERROR, exc
        result.error = _where(session, str(exc))
    except OSError as exc:
        problem = environment_problem(exc)
        result.status, failure = "error", problem or exc
        exit_code = ExitCode.USAGE_ERROR if problem else ExitCode.INTERNAL_ERROR
        result.error = _where(session, str(problem) if problem else "".join(traceback.format_exception(exc)))
    except Exception as exc:  # a bug outside any one evaluation (a plugin hook)
        result.status, exit_code, failure = "error", ExitCode.INTERNAL_ERROR, exc
        result.error = _where(session, "".join(traceback.format_exception(exc)))
    finally:
        result.evaluations.sort(key=lambda e: suite_order.get(e.id, len(suite_order)))
        result.finished_at = now()
        result.seconds = round(time.perf_counter() - started, 3)
        exit_code = _finish(session, result, exit_code)
        session.close()
    if failure is not None:  # the first error is the one to show; later failures are in run.json
        raise failure
    return exit_code


def _finish(session: Session, result: RunResult, exit_code: ExitCode) -> ExitCode:
    """Every `memeval_sessionfinish` runs, each on its own. A failing one (a reporter) is recorded in
    run.json and decides the exit code with the run's (4 when the machine refused, e.g. a full disk;
    3 for a bug), so run.json never says a run ended other than it did."""
    result.exit_code = int(exit_code)
    failed = call_each(session.config.hook.memeval_sessionfinish, session=session, result=result,
                       exitstatus=int(exit_code))
    if not failed and not result.failures:
        return exit_code
    codes = [ExitCode.INTERNAL_ERROR] if result.failures else []
    for plugin, exc in failed:
        for name, error in exc.failures if isinstance(exc, Failures) else [(f"plugin {plugin!r}", exc)]:
            message, code = _failure(error)
            result.failures.append(f"memeval_sessionfinish, {name}: {message}")
            codes.append(code)
    exit_code = most_severe(exit_code, *codes)
    result.exit_code = int(exit_code)
    for line in result.failures:
        print(f"ERROR: {line}", file=sys.stderr)
    try:
        result.write(session.run_dir.run_json)
    except OSError as exc:
        print(f"ERROR: {environment_problem(exc, 'run.json') or exc}", file=sys.stderr)
    return exit_code


def _failure(exc: BaseException) -> tuple[str, ExitCode]:
    """A hook's failure as one line, and its exit code: 4 for the user's or the machine's, else 3."""
    problem = environment_problem(exc) if isinstance(exc, OSError) else None
    if problem is not None or isinstance(exc, UsageError):
        return str(problem or exc), ExitCode.USAGE_ERROR
    return f"{type(exc).__name__}: {exc}", ExitCode.INTERNAL_ERROR


def _where(session: Session, message: str) -> str:
    item = getattr(session, "current", None)
    return f"in evaluation {item.id!r}: {message}" if item is not None else message


def run_item(session: Session, item: Item) -> EvaluationResult:
    hook = session.config.hook
    hook.memeval_evaluation_start(item=item)
    started, started_at = time.perf_counter(), now()
    corrupted = session.cache.corrupted
    with atomic_writer(session.run_dir.records_file(item.id)) as records:
        context = EvaluationContext(session=session, item=item, _records=records, records_file=Path(records.name))
        result = _evaluate(session, item, context)
    if session.cache.corrupted > corrupted:
        context.warn(f"output cache: {session.cache.corrupted - corrupted} stored outputs failed their checksum "
                     f"and were recomputed (never used) and replaced")
    result.records_path = session.run_dir.records_ref(item.id)
    result.base_id, result.matrix = item.base_id, item.matrix
    result.warnings = context.warnings
    result.truncated = context.n_truncated
    result.artifacts = context.artifacts
    result.started_at, result.seconds = started_at, round(time.perf_counter() - started, 3)
    for name, exc in call_each(hook.memeval_evaluation_finish, item=item, result=result):
        session.result.failures.append(f"memeval_evaluation_finish of plugin {name!r} for evaluation {item.id!r}: "
                                       f"{_failure(exc)[0]}")
    return result


def _evaluate(session: Session, item: Item, context: EvaluationContext) -> EvaluationResult:
    """One evaluation: its executor, metrics and gates. A bug in the method or its plugin makes an
    errored result; a usage or environment error ends the run."""
    hook = session.config.hook
    started = time.perf_counter()
    try:
        model = context.model
        before = model.counter.snapshot() if isinstance(model, CachedCausalLM) else None
        setup_seconds = time.perf_counter() - started
        result = hook.memeval_run_evaluation(item=item, context=context)
        if result is None:
            raise UsageError(f"no executor plugin ran evaluation {item.id!r} (is the 'local' plugin blocked?)")
        result.setup_seconds = round(setup_seconds, 3)
        _check_metrics(item, result.metrics)
        if before is not None:
            after = model.counter.snapshot()
            result.model_calls = {k: after[k] - before[k] for k in after}
        result.gates = [judge(gate, result, session.suite) for gate in item.spec.gates]
        context.warnings += [v.note for v in result.gates if v.note]
        result.status = "passed" if all(v.passed for v in result.gates) else "failed"
    except UsageError as exc:
        if exc.file is None and item.spec.model and not isinstance(exc, EnvironmentProblem):
            raise session.suite.error(("evaluations", item.index), exc.message) from None
        raise
    except (SuiteErrors, KeyboardInterrupt):
        raise
    except Exception as exc:
        problem = environment_problem(exc) if isinstance(exc, OSError) else None
        if problem is not None:
            raise problem from None
        result = EvaluationResult(id=item.id, method=item.method_cls.name, model=item.spec.model,
                                  dataset=item.spec.dataset, params=item.params.model_dump(mode="json"),
                                  status="error", error="".join(traceback.format_exception(exc)))
        result.n_samples = context.n_records
        result.gates = [not_judged(gate, f"not judged: evaluation {item.id!r} errored") for gate in item.spec.gates]
    return result


def _check_metrics(item: Item, metrics: list[Metric]) -> None:
    """Fill each metric's direction and description from the method's declaration."""
    declared = {m.name: m for m in item.method_cls.metrics}
    for metric in metrics:
        if metric.name not in declared:
            raise RuntimeError(f"method {item.method_cls.name!r} returned undeclared metric {metric.name!r}")
        metric.higher_is_worse = declared[metric.name].higher_is_worse
        metric.description = declared[metric.name].description


def _exit_code(run: RunResult) -> ExitCode:
    results = run.evaluations
    if any(r.status == "error" for r in results) or run.failures:
        return ExitCode.INTERNAL_ERROR
    if any(r.status == "failed" for r in results):
        return ExitCode.GATES_FAILED
    return ExitCode.OK


def _options(config: Config) -> dict[str, Any]:
    options = {k: v for k, v in vars(config.options).items() if k not in ("func",)}
    return json.loads(json.dumps(options, default=str))


def environment(where: Path) -> dict[str, Any]:
    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            packages[name] = version(name)
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "packages": packages, "memeval": __version__, "git": git_revision(where)}
    env["hf_hub_offline"] = os.environ.get("HF_HUB_OFFLINE") == "1"
    return env


def git_revision(where: Path) -> dict[str, Any] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=where, capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None
