"""`extraction.forecast`: how well one model's memorized set predicts another's (Biderman et al.
2023)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from memeval.api import Method, Metric, MetricSpec, Params, Sample, Strict, rate_metric
from memeval_plugins.extraction.discoverable import Discoverable


class RunRef(Strict):
    evaluation: str = Field(description="id of an extraction.discoverable evaluation")
    run: str | None = Field(None, description="saved run directory (default: this run; it must come earlier)")


class ForecastParams(Params):
    source: RunRef = Field(description="the smaller or earlier model's extraction (the forecast)")
    target: RunRef = Field(description="the target model's extraction (the truth)")
    memorized_if: Literal["exact", "score"] = Field("exact", description="exact match, or memorization score >= "
                                                                          "score_threshold")
    score_threshold: float = Field(1.0, ge=0, le=1, description="a sample counts as memorized when its "
                                                                "memorization_score is at least this (1: verbatim)")


class Forecast(Method):
    """Forecast memorization from a smaller or earlier model (Biderman et al. 2023).

    The forecast says "memorized" for the samples the source model memorized; the truth is what
    the target model memorized, over the samples both evaluations saw (matched by id).
    precision = |forecast and truth| / |forecast|, recall = |forecast and truth| / |truth|, each
    with an exact binomial CI.
    """

    name = "extraction.forecast"
    summary = "precision and recall of forecasting a model's memorized set from another's"
    Params = ForecastParams
    needs_dataset = False
    metrics = (
        MetricSpec("forecast_precision", "share of source-memorized samples the target memorized", None),
        MetricSpec("forecast_recall", "share of target-memorized samples the source memorized", None),
        MetricSpec("n_target_memorized", "samples the target memorized", True),
    )

    @classmethod
    def check_references(cls, params: ForecastParams, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        problems = []
        earlier = {e.id: e.method for e in suite.spec.evaluations[:index]}
        for side in ("source", "target"):
            ref: RunRef = getattr(params, side)
            where = ("params", side)
            if ref.run is not None:
                path = suite.resolve_path(ref.run)
                if not (path / "run.json" if path.is_dir() else path).exists():
                    problems.append(((*where, "run"), f"saved run {str(path)!r} does not exist"))
            elif ref.evaluation not in earlier:
                later = any(e.id == ref.evaluation for e in suite.spec.evaluations)
                problems.append(((*where, "evaluation"), f"evaluation {ref.evaluation!r} must come earlier in the "
                                                         f"suite" if later else f"no evaluation {ref.evaluation!r}"))
            elif earlier[ref.evaluation] != Discoverable.name:
                problems.append(((*where, "evaluation"), f"evaluation {ref.evaluation!r} is not {Discoverable.name}"))
        return problems

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        source = self._memorized(context.records_of(self.params.source.evaluation, self.params.source.run))
        target = self._memorized(context.records_of(self.params.target.evaluation, self.params.target.run))
        shared = sorted(set(source) & set(target))
        if not shared:
            raise ValueError("the source and target evaluations share no sample ids")
        return [{"id": i, "source": source[i], "target": target[i]} for i in shared]

    def _memorized(self, records: list[dict[str, Any]]) -> dict[str, bool]:
        key = "exact" if self.params.memorized_if == "exact" else "memorization_score"
        if any(key not in r for r in records):
            raise ValueError(f"the referenced evaluation's records have no {key!r} (an extraction.discoverable "
                             f"run with memorization_score: false has no scores)")
        if key == "exact":
            return {r["id"]: bool(r["exact"]) for r in records}
        return {r["id"]: r["memorization_score"] >= self.params.score_threshold for r in records}

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        return batch

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        both = sum(r["source"] and r["target"] for r in records)
        forecast = sum(r["source"] for r in records)
        truth = sum(r["target"] for r in records)
        return [rate_metric("forecast_precision", both, forecast), rate_metric("forecast_recall", both, truth),
                Metric("n_target_memorized", float(truth), n=len(records))]
