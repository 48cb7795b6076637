"""`extraction.probabilistic`: the probability that a deployed sampler emits the exact suffix
((n, p)-discoverable extraction, Hayes et al. 2024)."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from typing import Any

import numpy as np
from pydantic import Field

from memeval.api import (
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Records,
    Sample,
    Section,
    mean_metric,
    rate_metric,
)
from memeval_plugins.extraction.sections import probabilistic_sections
from memeval_plugins.extraction.units import (
    PrefixSuffixParams,
    cut_tokens,
    prefix_suffix_units,
    prompt_length,
    report_cuts,
    scored_key,
    sequence,
)


class ProbabilisticParams(PrefixSuffixParams):
    temperature: float = Field(1.0, gt=0, description="the deployed sampler's temperature")
    top_k: int | None = Field(None, ge=1, description="the deployed sampler's top-k (None: off)")
    top_p: float | None = Field(None, gt=0, le=1, description="the deployed sampler's top-p (None: off)")
    n_queries: int = Field(1000, ge=1, description="n: queries an attacker makes with the same prefix")
    target_probability: float = Field(0.5, gt=0, lt=1, description="p: extraction counts at this probability")


class Probabilistic(Method):
    """(n, p)-discoverable extraction (Hayes et al. 2024).

    p_z is the probability that the sampler emits the exact m-token suffix given the k-token
    prefix: the product over suffix positions of the sampler's probability of the true token
    (temperature, then top-k, then top-p; a filtered-out token has probability 0), read from one
    teacher-forced forward pass. With plain sampling (temperature 1, no top-k/top-p) that pass is
    the same cached pass greedy extraction and the membership attacks use.
    The chance to extract within n queries is 1 - (1 - p_z)^n; a sample is (n, p)-extractable when
    that reaches p; the queries needed for probability p are ceil(log(1 - p) / log(1 - p_z)).
    """

    name = "extraction.probabilistic"
    summary = "probability that a sampler emits the training suffix: (n, p)-discoverable extraction"
    Params = ProbabilisticParams
    requires = frozenset({"logprobs"})
    metrics = (
        MetricSpec("np_extractable_rate", "share of samples extracted with probability >= p within n queries", True),
        MetricSpec("extraction_probability_mean", "mean over samples of 1 - (1 - p_z)^n", True,
                   "probability_within_n"),
        MetricSpec("log10_p_z_median", "median over samples of log10 p_z", True),
        MetricSpec("greedy_extractable_rate", "share of samples greedy decoding reproduces (for comparison)",
                   True, "greedy_exact"),
    )

    @classmethod
    def scored_sequences(cls, params: ProbabilisticParams) -> tuple[str, int, int]:
        return scored_key(params.prefix_tokens, params.suffix_tokens)

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        p = self.params
        units = prefix_suffix_units(samples, context.model, context.warn, p.prefix_tokens, p.suffix_tokens)
        report_cuts(units, p.prefix_tokens, p.suffix_tokens, context)
        return units

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["context"]) + len(unit["suffix"])

    def plain_sampler(self) -> bool:
        p = self.params
        return p.temperature == 1.0 and p.top_k is None and p.top_p in (None, 1.0)

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        p, model = self.params, context.model
        sequences = [sequence(u, p.prefix_tokens) for u in batch]
        scores = model.score(sequences)
        sampler = (None if self.plain_sampler() else
                   model.sampler_logprobs(sequences, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p))
        records = []
        for i, unit in enumerate(batch):
            start = prompt_length(unit, p.prefix_tokens) - 1
            positions = slice(start, start + len(unit["suffix"]))
            token_logprobs = (scores[i].logprob if sampler is None else sampler[i])[positions].astype(np.float64)
            log_p = float(token_logprobs.sum())
            greedy = bool((scores[i].argmax[positions].astype(int) == np.asarray(unit["suffix"])).all())
            records.append({"id": unit["sample"].id, "suffix": model.decode(unit["suffix"]), "log_p_z": log_p,
                            "p_z": math.exp(log_p), **extraction_odds(log_p, p.n_queries, p.target_probability),
                            "greedy_exact": greedy, **cut_tokens(unit, p.prefix_tokens, p.suffix_tokens)})
        return records

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        p = self.params
        extractable = sum(r["probability_within_n"] >= p.target_probability for r in records)
        log10 = [r["log_p_z"] / math.log(10) if math.isfinite(r["log_p_z"]) else -1e300 for r in records]
        return [rate_metric("np_extractable_rate", extractable, len(records)),
                mean_metric("extraction_probability_mean", [r["probability_within_n"] for r in records],
                            seed=context.seed),
                mean_metric("log10_p_z_median", log10, seed=context.seed, statistic=np.median, label="median"),
                rate_metric("greedy_extractable_rate", sum(r["greedy_exact"] for r in records), len(records))]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return probabilistic_sections(evaluation, records)


TINY_LOG_P = -50.0  # below, p_z < 2e-22 and log(1 - p_z) = -p_z (1 + p_z / 2 + ...) is -p_z in doubles


def extraction_odds(log_p: float, n: int, target: float) -> dict[str, Any]:
    """1 - (1 - p_z)^n and the queries needed to reach `target`, in log space so that neither a
    p_z that underflows (long suffixes) nor one that rounds to 1 breaks them."""
    if log_p == -math.inf:
        return {"probability_within_n": 0.0, "queries_needed": None}
    if log_p >= 0.0:
        return {"probability_within_n": 1.0, "queries_needed": 1}
    if log_p < TINY_LOG_P:  # log(1 - p_z) = -p_z to double precision: everything follows from log p_z
        within = -math.expm1(-math.exp(math.log(n) + log_p))
        needed = int((Decimal(-math.log1p(-target)).ln() - Decimal(log_p)).exp().to_integral_value(ROUND_CEILING))
        return {"probability_within_n": within, "queries_needed": max(1, needed)}
    # log(1 - p_z) without forming 1 - p_z where that loses it: near p_z = 1 it is log(-expm1(log p_z)).
    log1m = math.log(-math.expm1(log_p)) if log_p > -math.log(2) else math.log1p(-math.exp(log_p))
    within = -math.expm1(n * log1m)
    needed = math.ceil(math.log1p(-target) / log1m)
    return {"probability_within_n": within, "queries_needed": max(1, needed)}
