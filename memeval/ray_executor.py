"""`ray`: run evaluations on a Ray cluster (`--executor ray`, or `executor: {kind: ray}` in a suite).

This module is the builtin `ray` plugin. It implements `memeval_run_evaluation` with `tryfirst`;
an evaluation it does not take falls through to the local executor (runner.py).

Map-shaped LM methods: `prepare` runs on the driver, a block of samples at a time for a method
that `prepares_in_blocks` (else all at once), as the local executor does; each block's units are cut
into the local executor's very batches (so every forward pass sees the same rows and the numbers are
bit-identical); a batch whose model outputs are all in the output cache is replayed on the driver
and never dispatched; the others go to a pool of actors, each holding the model once (its own torch
thread count), started for the first batch the cache cannot answer and kept for every block after
it. An actor that dies is restarted and its batch retried. Actors keep what they compute in memory
and send it back with the records: the driver writes it to the output cache, so a second run is all
cache hits and a killed run resumes. Batches come back in any order; the driver emits each block's
in order before it prepares the next, so it holds one block of samples, units and records at a
time, then `reduce` runs on the driver over the records file. (Ray Data is not used here: its actor
pool lives for one dataset's execution, whose input must exist in full before it starts, so feeding
it block by block would load the model again for every block.)

Training experiments (models with the `train` capability, e.g. a `matrix` over seeds): every such
evaluation is sent as one Ray task when the session starts, so the cells train in parallel; the
driver then takes each cell's records and metrics in order.

The cluster: `--address` / `executor.address` joins one (`auto`, `ray://host:port`); without it a
local cluster is started with `num_cpus` / `num_gpus` and shut down through `ray.shutdown()` when
memeval ends. memeval never runs `ray stop` (it ends every Ray process on the machine). A cluster
that was already connected in this process (e.g. by a test) is used and left running.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from memeval import hookimpl
from memeval.cache import CallCounter, OutputCache
from memeval.collect import Item
from memeval.config import Config
from memeval.errors import UsageError
from memeval.models.base import CachedCausalLM, CausalLM
from memeval.plugins import build_registry, make_plugin_manager
from memeval.results import EvaluationResult
from memeval.runner import (
    EvaluationContext,
    Session,
    batches,
    map_reduce,
    map_size,
    reduce,
    unit_blocks,
)
from memeval.stash import StashKey
from memeval.suite import ExecutorSpec

TRAINING = StashKey[dict]()  # item id -> the Ray task running that training experiment
_OWNED = {"cluster": False}  # whether this process started the cluster it is connected to


# -- options ------------------------------------------------------------------------------


@hookimpl
def memeval_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), help="where evaluations run (default: the suite's "
                                                                      "`executor`, else local)")
    parser.add_argument("--address", metavar="ADDR", help="ray: join this cluster ('auto' or ray://host:port) "
                                                          "instead of starting a local one")
    parser.add_argument("--ray-cpus", type=float, metavar="N", help="ray, local cluster: CPUs it may use")
    parser.add_argument("--ray-gpus", type=float, metavar="N", help="ray, local cluster: GPUs it may use")
    parser.add_argument("--ray-actors", type=int, metavar="N", help="ray: model-holding actors")


def executor_spec(session: Session) -> ExecutorSpec:
    """The suite's `executor`, with the command line's overrides."""
    spec = session.suite.spec.executor or ExecutorSpec()
    options = session.config.options
    update = {key: getattr(options, option) for key, option in
              (("kind", "executor"), ("address", "address"), ("num_cpus", "ray_cpus"), ("num_gpus", "ray_gpus"),
               ("actors", "ray_actors")) if getattr(options, option, None) is not None}
    return ExecutorSpec.model_validate({**spec.model_dump(), **update})


# -- the cluster --------------------------------------------------------------------------


def connect(spec: ExecutorSpec, verbosity: int) -> Any:
    """The `ray` module, connected: to the cluster of this process, to `address`, or to a new
    local one (which memeval shuts down at the end)."""
    try:
        import ray
    except ImportError:
        raise UsageError("executor ray: Ray is not installed (pip install 'memeval[ray]')") from None
    if verbosity <= 0:
        logging.getLogger("ray").setLevel(logging.WARNING)
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbosity > 0,
                              "logging_level": logging.INFO if verbosity > 0 else logging.WARNING}
    if spec.address:
        kwargs["address"] = spec.address
    else:
        # A local cluster sees what this process sees: `-p` plugins and test modules import there too.
        # Ray starts workers at niceness 15: on a busy machine the actors would starve behind any
        # other process, the driver included. A local cluster's workers run at the default priority.
        kwargs.update(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, _system_config={"worker_niceness": 0},
                      runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"executor ray: cannot connect to the cluster at {spec.address!r}: {exc}") from None
    _OWNED["cluster"] = True
    return ray


@hookimpl
def memeval_unconfigure(config: Config) -> None:
    if _OWNED["cluster"]:
        import ray

        ray.shutdown()  # this process's cluster only; never `ray stop`
        _OWNED["cluster"] = False


def pool_size(ray: Any, spec: ExecutorSpec) -> tuple[int, float]:
    """Actors, and the CPUs each claims: by default one actor per CPU, sharing all but one CPU, so
    Ray's own tasks (and a training experiment's) always find a CPU (a pool that claims every CPU
    can hang them)."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    actors = spec.actors or max(1, int(cpus))
    share = spec.cpus_per_actor or max(0.01, (cpus - 1) / actors if cpus > 1 else cpus / (actors + 1))
    return actors, round(share, 3)


# -- what a worker rebuilds ---------------------------------------------------------------


@dataclass
class Job:
    """Everything a worker needs to rebuild the session of one evaluation (all picklable)."""

    item: Item
    plugins: list[str]
    cache_dir: str
    seed: int
    limit: int | None
    threads: int
    method: bytes = b""  # the prepared method instance (its state from `prepare`), cloudpickled
    reader: Any = None  # the CacheReader actor
    sharing: bool = False  # the driver's cache keeps what one method computes for another (`OutputCache.shares`)


class CacheReader:
    """A Ray actor on the driver's node that reads the driver's output cache for the workers: a
    batch that is partly cached uses the cached outputs, exactly as the local executor would."""

    def __init__(self, directory: str, mode: str):
        self.cache = OutputCache(Path(directory), mode)

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return self.cache.get_many(keys)


@dataclass
class RecordingCache(OutputCache):
    """A worker's output cache: reads go to the driver's cache (through its `reader` actor); what is
    computed is kept in memory (and reused within a batch) until the driver takes it with the
    records and writes it to the real cache."""

    mode: str = "off"
    reader: Any = None
    sharing: bool = False
    entries: dict[str, tuple[str, str, bytes]] = field(default_factory=dict, init=False)

    @property
    def shares(self) -> bool:
        return self.sharing

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        found = {key: self.entries[key][2] for key in keys if key in self.entries}
        rest = [key for key in keys if key not in found]
        if rest and self.reader is not None:
            import ray

            found.update(ray.get(self.reader.get_many.remote(rest)))
        return found

    def put_many(self, model_id: str, op: str, items: list[tuple[str, bytes]]) -> None:
        for key, value in items:
            self.entries[key] = (model_id, op, value)

    def drain(self) -> dict[str, tuple[str, str, bytes]]:
        entries, self.entries = self.entries, {}
        return entries


def worker_context(job: Job) -> EvaluationContext:
    """The evaluation's context rebuilt in a worker: the same suite, plugins and seed, the shared
    cache directory (where trained recipes live), and a recording output cache."""
    import torch

    torch.set_num_threads(job.threads)
    with contextlib.suppress(OSError):  # a joined cluster's workers may be niced: undo it where allowed
        os.setpriority(os.PRIO_PROCESS, 0, min(os.getpriority(os.PRIO_PROCESS, 0), 0))
    options = argparse.Namespace(cache="off", cache_dir=job.cache_dir, seed=job.seed, limit=job.limit,
                                 plugins=job.plugins, verbose=0, quiet=1)
    pm = make_plugin_manager(job.plugins)
    config = Config(options=options, pluginmanager=pm, registry=build_registry(pm))
    session = Session(config, job.item.suite, Path(tempfile.mkdtemp(prefix="memeval-worker-")))
    session.cache = RecordingCache(Path(job.cache_dir), reader=job.reader, sharing=job.sharing)
    return EvaluationContext(session=session, item=job.item)


class MapActor:
    """Holds the model (built once, on first use) and maps batches of units to records."""

    def __init__(self, job: Job):
        import cloudpickle

        self.context = worker_context(job)
        self.method = cloudpickle.loads(job.method)

    def map(self, batch: int, units: list[Any]) -> tuple[int, dict[str, Any]]:
        """Batch `batch`'s records, with the outputs computed for them and the model calls made."""
        model = self.context.model
        before = model.counter.snapshot()
        records = self.method.map(units, self.context)
        after = model.counter.snapshot()
        return batch, {"records": records, "outputs": self.context.cache.drain(),
                       "counts": {k: after[k] - before[k] for k in after}, "warnings": self.context.warnings[:]}


RETRIES = 3  # restarts of a dead actor, and retries of the batch it was mapping


@dataclass
class Pool:
    """The evaluation's model-holding actors: started for the first batch the cache cannot answer
    (joining or starting the cluster then), and kept for every block after it."""

    spec: ExecutorSpec
    context: EvaluationContext
    method: bytes  # the prepared method, cloudpickled
    ray: Any = None
    reader: Any = None
    actors: list[Any] = field(default_factory=list)

    def map(self, batches: list[tuple[int, list[Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(batch, result) for each (batch, units), in the order they are done."""
        if not self.actors:
            self._start(len(batches))
        from ray.util import ActorPool

        return ActorPool(self.actors).map_unordered(lambda actor, batch: actor.map.remote(*batch), batches)

    def _start(self, wanted: int) -> None:
        session = self.context.session
        self.ray = connect(self.spec, session.config.verbosity)
        self.reader = cache_reader(self.ray, session)
        options = session.config.options
        job = Job(item=self.context.item, plugins=list(getattr(options, "plugins", None) or []),
                  cache_dir=str(session.config.cache_dir.resolve()), seed=session.seed,
                  limit=getattr(options, "limit", None), threads=self.spec.threads, method=self.method,
                  reader=self.reader, sharing=session.cache.shares)
        actors, cpus = pool_size(self.ray, self.spec)
        actor = self.ray.remote(num_cpus=cpus, num_gpus=self.spec.gpus_per_actor or None, max_restarts=RETRIES,
                                max_task_retries=RETRIES)(MapActor)
        self.actors = [actor.remote(job) for _ in range(min(actors, wanted))]  # an idle one would only load the model

    def close(self) -> None:
        for actor in [*self.actors, *([self.reader] if self.reader is not None else [])]:
            self.ray.kill(actor)


# -- replaying cached batches on the driver -----------------------------------------------


class NotCached(Exception):
    """A model output a replay needed is not in the cache."""


class ReplayOnly(CachedCausalLM):
    """The driver's model, answering from the cache only: a miss raises NotCached."""

    def __init__(self, cached: CachedCausalLM):
        self.model, self.cache, self.model_id = cached.model, cached.cache, cached.model_id
        self.counter = CallCounter()

    def _cached(self, op: str, keys: list[str], compute: Any, dump: Any, load: Any) -> list[Any]:
        def refuse(missing: list[int]) -> list[Any]:
            raise NotCached(op)

        return super()._cached(op, keys, refuse, dump, load)


class ReplayContext:
    """The evaluation's context with every causal LM answering from the cache only."""

    def __init__(self, context: EvaluationContext):
        self._context = context
        self.model = ReplayOnly(context.model)

    def model_named(self, name: str) -> Any:
        model = self._context.model_named(name)
        return ReplayOnly(model) if isinstance(model, CachedCausalLM) else model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


# -- map-shaped methods -------------------------------------------------------------------


@hookimpl(tryfirst=True)
def memeval_run_evaluation(item: Item, context: EvaluationContext) -> EvaluationResult | None:
    session = context.session
    spec = executor_spec(session)
    if spec.kind != "ray":
        return None
    training = session.stash.get(TRAINING, {})
    if item.id in training:
        return collect_training(item, context, training.pop(item.id))
    if not isinstance(context.model, CachedCausalLM):
        session.log(f"{item.id}: not a causal-LM method; runs in this process")
        return None
    method = item.method_cls(item.params)
    blocks = unit_blocks(item, context, method)
    pool: Pool | None = None
    tally: Counter[str] = Counter()
    n_units = 0
    try:
        for units in blocks:
            if pool is None:  # the method as `prepare` left it, sent once
                pool = make_pool(spec, context, method)
                if pool is None:
                    return map_reduce(item, context, method, chain([units], blocks))
            map_block(method, units, context, pool, tally)
            n_units += len(units)
            del units
    finally:
        if pool is not None and pool.ray is not None:
            pool.close()
    session.log(f"{item.id}: {tally['batches']} batches, {tally['replayed']} replayed from the cache, "
                f"{tally['sent']} sent to Ray")
    return reduce(item, context, method, n_units)


def make_pool(spec: ExecutorSpec, context: EvaluationContext, method: Any) -> Pool | None:
    """A pool for the prepared method, or None (with a warning) when it cannot be sent to a worker."""
    import cloudpickle

    try:
        return Pool(spec, context, cloudpickle.dumps(method))
    except Exception as exc:  # e.g. a method that keeps an open cache after `prepare`
        context.warn(f"ran in this process, not on Ray: the prepared method cannot be sent to a worker "
                     f"({type(exc).__name__}: {exc})")
        return None


def map_block(method: Any, units: list[Any], context: EvaluationContext, pool: Pool, tally: Counter[str]) -> None:
    """One block of units: its batches replayed from the cache or mapped on the pool, emitted in order."""
    groups = batches(method, units, map_size(method, context))
    done = replay(method, units, groups, context)
    todo = [b for b in range(len(groups)) if b not in done]
    tally.update(batches=len(groups), replayed=len(done), sent=len(todo))
    if todo:
        dispatch(pool, units, groups, todo, context, done)
    for b in range(len(groups)):
        context.emit(done.pop(b))


def replay(method: Any, units: list[Any], groups: list[list[int]], context: EvaluationContext
           ) -> dict[int, list[dict[str, Any]]]:
    """The batches whose model outputs are all cached, mapped on the driver from the cache."""
    probe = ReplayContext(context)
    done = {}
    for b, group in enumerate(groups):
        probe.model.counter = CallCounter()
        try:
            done[b] = method.map([units[i] for i in group], probe)
        except NotCached:
            continue
        context.model.counter.cache_hits += probe.model.counter.cache_hits
    return done


def cache_reader(ray: Any, session: Session) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, scheduling_strategy=here)(CacheReader)
    return actor.remote(str(session.config.cache_dir.resolve()), session.cache.mode)


def dispatch(pool: Pool, units: list[Any], groups: list[list[int]], todo: list[int], context: EvaluationContext,
             done: dict[int, list[dict[str, Any]]]) -> None:
    """Map the `todo` batches on the pool; write their outputs to the cache as they arrive."""
    counter = context.model.counter
    for b, result in pool.map([(b, [units[i] for i in groups[b]]) for b in todo]):
        write_outputs(context.cache, result["outputs"])
        done[b] = result["records"]
        for key, value in result["counts"].items():
            setattr(counter, key, getattr(counter, key) + value)
        context.warnings.extend(w for w in result["warnings"] if w not in context.warnings)


def write_outputs(cache: OutputCache, outputs: dict[str, tuple[str, str, bytes]]) -> None:
    grouped: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for key, (model_id, op, value) in outputs.items():
        grouped.setdefault((model_id, op), []).append((key, value))
    for (model_id, op), items in grouped.items():
        cache.put_many(model_id, op, items)


# -- training experiments -----------------------------------------------------------------


def trains(session: Session, item: Item) -> bool:
    """A training experiment: its model is trained by memeval and is not a causal LM (those are
    map-shaped; their recipe trains once, on the driver)."""
    if not item.spec.model:
        return False
    adapter = session.config.registry.get("adapter", session.suite.spec.models[item.spec.model].adapter)
    return "train" in adapter.capabilities and not issubclass(adapter, CausalLM)


@hookimpl(trylast=True)
def memeval_collection_modifyitems(session: Session, items: list[Item]) -> None:
    """Send every training experiment (each cell of a matrix) as one Ray task now, so they train in
    parallel while the driver collects them in order."""
    spec = executor_spec(session)
    cells = [item for item in items if trains(session, item)] if spec.kind == "ray" else []
    if not cells:
        return
    ray = connect(spec, session.config.verbosity)
    _, cpus = pool_size(ray, spec)
    task = ray.remote(num_cpus=cpus, num_gpus=spec.gpus_per_actor or None, max_retries=3)(run_cell)
    options = session.config.options
    session.stash[TRAINING] = {
        item.id: task.remote(Job(item=item, plugins=list(getattr(options, "plugins", None) or []),
                                 cache_dir=str(session.config.cache_dir.resolve()), seed=session.seed,
                                 limit=getattr(options, "limit", None), threads=spec.threads))
        for item in cells}
    session.log(f"{len(cells)} training experiments sent to Ray")


def run_cell(job: Job) -> tuple[EvaluationResult, str, list[str], dict[str, Any]]:
    """One training experiment in a Ray worker, by the local executor: trains the model (into the
    shared cache directory) and runs the method; returns the result and the records as JSON lines."""
    from memeval.runner import memeval_run_evaluation as run_locally

    context = worker_context(job)
    context._records = io.StringIO()
    result = run_locally(item=job.item, context=context)
    return result, context._records.getvalue(), context.warnings, context.artifacts


def collect_training(item: Item, context: EvaluationContext, future: Any) -> EvaluationResult:
    import json

    import ray

    try:
        result, records, warnings, artifacts = ray.get(future)
    except ray.exceptions.RayTaskError as exc:  # the user's error as the local executor raises it
        if isinstance(exc.cause, UsageError):
            raise exc.cause from None
        raise
    context.emit(json.loads(line) for line in records.splitlines() if line.strip())
    context.warnings.extend(w for w in warnings if w not in context.warnings)
    context.artifacts.update(artifacts)
    return result
