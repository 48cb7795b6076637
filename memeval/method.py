"""The contract between the core and a method: its params, metrics, map/reduce, report sections, and
the `Context` it runs in."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from memeval.errors import RegistryError
from memeval.results import EvaluationResult, Metric, Records
from memeval.sample import Sample
from memeval.suite import Strict

if TYPE_CHECKING:
    from memeval.blocks import Section
    from memeval.cache import OutputCache


# `Method.scored_sequences` of a method that scores each sample's whole token sequence.
SCORED_SAMPLES = "samples"


class Params(Strict):
    """Base for method params: unknown keys are errors, so a typo is caught before anything runs."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    higher_is_worse: bool | None  # worse = more memorization / more leakage; None = no direction
    # The record field this metric summarises (with `statistic`), when it is a per-sample summary:
    # lets `memeval compare` pair two runs' samples by id and put a CI on the change.
    per_sample: str | None = None
    statistic: Literal["mean", "median"] = "mean"


class Context(Protocol):
    """What a method sees while it runs. The core gives one to `prepare`, `map` and `reduce`; a
    method reaches its model, data, seed and outputs only through it."""

    @property
    def params(self) -> Any:
        """The evaluation's validated params (an instance of the method's `Params`)."""

    @property
    def seed(self) -> int:
        """The run's seed (the suite's, or `--seed`)."""

    @property
    def batch_size(self) -> int:
        """Units per `map` call: the params' `batch_size`, else the model's, else 16."""

    @property
    def model(self) -> Any:
        """The evaluation's model adapter (None for methods that need none)."""

    @property
    def samples(self) -> list[Sample]:
        """The evaluation's dataset (after `--limit`)."""

    @property
    def cache(self) -> OutputCache:
        """The output cache (SQLite): `get_many`/`put_many` by `output_key`, `require` under
        `--cache only`, `file_digest` of a file."""

    @property
    def cache_dir(self) -> Path:
        """The cache directory, for derived artifacts a method builds once (e.g. a corpus index)."""

    @property
    def scored_by_others(self) -> frozenset[Hashable]:
        """What the session's other evaluations of this model and dataset score teacher-forced
        (their methods' `scored_sequences`), for a method that `scores_for_others`: it scores those
        sequences in its own pass, and the cache gives them to the others."""

    def model_named(self, name: str) -> Any:
        """Another model of the suite, named by a param listed in the method's `model_params`."""

    def dataset_named(self, name: str) -> list[Sample]:
        """Another dataset of the suite, named by a param listed in the method's `dataset_params`."""

    def stream_texts(self, name: str) -> Iterator[str]:
        """A dataset's texts one at a time, never all in memory (a training corpus)."""

    def records_of(self, evaluation_id: str, run: str | None = None) -> list[dict[str, Any]]:
        """The records of another evaluation: one that ran in this session, or one in a saved
        run (a directory or run.json relative to the suite)."""

    def resolve_path(self, path: str) -> Path:
        """A path as the suite means it: relative to the suite file's directory."""

    def emit(self, records: Iterable[dict[str, Any]]) -> None:
        """Stream records to `records/<id>.jsonl` (the executor emits what `map` returns)."""

    def warn(self, message: str) -> None:
        """A warning kept with the evaluation and shown in the terminal and the reports."""

    def artifact(self, name: str, value: Any) -> None:
        """Keep a JSON-serialisable result that is not a metric (a curve, a table) for reporters."""

    def truncated(self, count: int, total: int, what: str, requested: bool = False) -> None:
        """Say that `count` of `total` units were cut (`what`: which part, to what, by how much).
        A cut the suite asked for (`requested`, e.g. its `max_tokens`) is a warning; any other is a
        usage error unless the suite says `on_truncate: warn`. Either way it is counted in the
        evaluation's `truncated` and shown in the terminal and the reports."""


class Method:
    """Base class of an evaluation method.

    LM methods are map/reduce shaped: `prepare` turns samples into units of work, the runner sorts
    them by `size` and batches them, `map` turns a batch into records (one dict per sample, JSON
    serialisable), and `reduce` turns all records, read back from the records file, into metrics.
    A method never prints or writes files; model calls go through `context.model`, whose outputs the
    runner caches. What it adds to the reports comes from `report_sections`, as data.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = Params
    requires: ClassVar[frozenset[str]] = frozenset()
    needs_dataset: ClassVar[bool] = True
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    # Params that name other suite datasets / models (checked before the run, fetched with
    # `context.dataset_named` / `context.model_named`).
    dataset_params: ClassVar[tuple[str, ...]] = ()
    model_params: ClassVar[tuple[str, ...]] = ()
    # The fields of the records `map` returns, field -> description (the method reference lists them).
    records: ClassVar[dict[str, str]] = {}
    # Model batches `map` receives at once: a method whose model calls pool work over several
    # batches (greedy decoding after the first divergence) asks for more than one.
    batches_per_map: ClassVar[int] = 1
    # `prepare` takes each sample on its own (its units for a block of samples are those it would give
    # them among all the others), and keeps no state that `map` needs: the executors then prepare and
    # map the dataset a block of samples at a time (`memeval.runner.BLOCK_SAMPLES`), sorted into
    # batches by `size` within each block, and never hold all the samples or units. A cut it reports
    # (`context.truncated`) is added up over the blocks.
    prepares_in_blocks: ClassVar[bool] = False

    def __init__(self, params: BaseModel):
        self.params = params

    @classmethod
    def metric_names(cls) -> list[str]:
        return [m.name for m in cls.metrics]

    @classmethod
    def metric_spec(cls, name: str) -> MetricSpec | None:
        return next((m for m in cls.metrics if m.name == name), None)

    @classmethod
    def check_references(cls, params: BaseModel, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        """Problems with what the params point at (other evaluations, runs), as (field path under
        the evaluation, message) pairs; checked before anything runs."""
        return []

    @classmethod
    def produced_metrics(cls, params: BaseModel) -> list[str]:
        """The metrics a run with these params produces (a subset of `metrics`)."""
        return cls.metric_names()

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        """Sections this method adds to the HTML and Markdown reports for one of its evaluations:
        plots, tables, the most memorized samples next to the truth (`memeval.api` blocks).

        Build them from what the run kept: `evaluation.metrics`, `evaluation.artifacts` and the
        streamed `records` (use `records.top(n, key)`, never hold them all). Wrap text that may be
        training data in `Sensitive` so `redact: true` can mask it. Called with no model loaded
        (also by `memeval report`)."""
        return []

    @classmethod
    def scored_sequences(cls, params: BaseModel) -> Hashable | None:
        """Which teacher-forced scores (`model.score`, cached under one shared key) this method reads
        for each sample, as a value the sharing plan (`memeval.sharing`) compares across the
        evaluations of one model and dataset: `SCORED_SAMPLES` for each sample's whole token
        sequence; None (the default) when the plan need not know."""
        return None

    @classmethod
    def scores_for_others(cls, params: BaseModel) -> frozenset[Hashable]:
        """The `scored_sequences` this method's own forward pass can also score, for less than a
        pass of their own. When another evaluation of its model and dataset reads one of them, the
        sharing plan runs this one first and tells it which (`Context.scored_by_others`)."""
        return frozenset()

    def prepare(self, samples: Sequence[Sample], context: Context) -> list[Any]:
        return list(samples)

    def size(self, unit: Any) -> int:
        """Work in one unit; the runner batches units of similar size together."""
        return 0

    def map(self, batch: list[Any], context: Context) -> list[dict[str, Any]]:
        raise NotImplementedError

    def reduce(self, records: Sequence[dict[str, Any]], context: Context) -> list[Metric]:
        """Metrics from the records, in the order `map` emitted them, as read back from the records
        file: each a JSON object (tuples are lists, keys strings, numpy values plain). `records` is a
        sequence read from the file as it is used (`memeval.api.Records`): iterate it as often as
        needed, take `len`, index it; hold only what a metric needs (a list of floats), not all the
        records."""
        raise NotImplementedError


def check_method_class(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise RegistryError(f"{cls!r} is not a memeval.api.Method subclass")
    if not cls.name or "." not in cls.name:
        raise RegistryError(f"{cls.__name__}.name must be 'family.name', got {cls.name!r}")
    if not cls.metrics:
        raise RegistryError(f"method {cls.name!r} declares no metrics")
