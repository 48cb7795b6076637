"""The shape of an evaluation method: params, required capabilities, metrics, map/reduce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from memeval.results import Metric

if TYPE_CHECKING:
    from memeval.runner import Context


class Params(BaseModel):
    """Base for method params: unknown keys are errors, so a typo is caught before anything runs."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    higher_is_worse: bool | None  # worse = more memorization / more leakage; None = no direction
    # The record field this metric summarises (with `statistic`), when it is a per-sample summary:
    # lets `memeval compare` pair two runs' samples by id and put a CI on the change.
    per_sample: str | None = None
    statistic: Literal["mean", "median"] = "mean"


class Method:
    """Base class of an evaluation method.

    LM methods are map/reduce shaped: `prepare` turns samples into units of work, the runner sorts
    them by `size` and batches them, `map` turns a batch into records (one dict per sample, JSON
    serialisable), and `reduce` turns all records into metrics. A method never prints or writes
    files; model calls go through `context.model`, whose outputs the runner caches.
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

    def __init__(self, params: BaseModel):
        self.params = params

    @classmethod
    def metric_names(cls) -> list[str]:
        return [m.name for m in cls.metrics]

    @classmethod
    def metric_spec(cls, name: str) -> MetricSpec:
        return next(m for m in cls.metrics if m.name == name)

    @classmethod
    def check_references(cls, params: BaseModel, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        """Problems with what the params point at (other evaluations, runs), as (field path under
        the evaluation, message) pairs; checked before anything runs."""
        return []

    @classmethod
    def produced_metrics(cls, params: BaseModel) -> list[str]:
        """The metrics a run with these params produces (a subset of `metrics`)."""
        return cls.metric_names()

    def prepare(self, samples: Sequence[Any], context: Context) -> list[Any]:
        return list(samples)

    def size(self, unit: Any) -> int:
        """Work in one unit; the runner batches units of similar size together."""
        return 0

    def map(self, batch: list[Any], context: Context) -> list[dict[str, Any]]:
        raise NotImplementedError

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        raise NotImplementedError


def check_method_class(cls: type) -> None:
    from memeval.registry import RegistryError

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise RegistryError(f"{cls!r} is not a memeval.method.Method subclass")
    if not cls.name or "." not in cls.name:
        raise RegistryError(f"{cls.__name__}.name must be 'family.name', got {cls.name!r}")
    if not cls.metrics:
        raise RegistryError(f"method {cls.name!r} declares no metrics")
