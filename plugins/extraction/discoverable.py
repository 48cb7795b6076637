"""`extraction.discoverable`: prompt with a training prefix, compare the greedy continuation with
the true suffix (Carlini et al. 2022; memorization score of Biderman et al. 2023)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from memeval.api import (
    SCORED_SAMPLES,
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Records,
    Sample,
    Section,
    histogram_counts,
    mean_metric,
    rate_metric,
)
from memeval_plugins.extraction.sections import discoverable_sections
from memeval_plugins.extraction.units import (
    PrefixSuffixParams,
    cut_tokens,
    prefix_suffix_units,
    prompt_length,
    report_cuts,
    scored_key,
    sequence,
    shared_rows,
)


class DiscoverableParams(PrefixSuffixParams):
    prefix_lengths: list[int] | None = Field(None, description="also measure extraction at these prefix lengths "
                                                                "(same suffix): an extraction vs context-length curve")
    memorization_score: bool = Field(True, description="compute the fractional memorization score (needs greedy "
                                                       "generation after the first divergence)")
    teacher_forced: bool = Field(False, description="also score every suffix position given the true tokens "
                                                    "before it (teacher_forced_accuracy, suffix_logprob, margins "
                                                    "along the true suffix): one more pass over the suffix after "
                                                    "the first divergence; always on without memorization_score")
    histogram_bins: int = Field(10, ge=1, le=100, description="bins of the memorization-score histogram artifact")

    @model_validator(mode="after")
    def _curve_fits(self) -> DiscoverableParams:
        if self.prefix_lengths and min(self.prefix_lengths) < 1:
            raise ValueError("prefix_lengths must be >= 1")
        return self

    def longest_prefix(self) -> int:
        return max([self.prefix_tokens, *(self.prefix_lengths or [])])


class Discoverable(Method):
    """Discoverable extraction: prompt with k training tokens, decode m tokens greedily.

    `exact` (Carlini et al. 2022): the greedy continuation equals the true suffix, all m tokens.
    `memorization_score` (Biderman et al. 2023): the fraction of the m positions where the greedy
    continuation equals the true suffix token (memorized iff the score is 1). The continuation is
    generated, so after a first mistake it goes on from its own tokens.
    `first_divergence` (the prefix match length): how many suffix tokens greedy decoding gets right
    before its first mistake (m when exact).
    `teacher_forced_accuracy` (with `teacher_forced: true`, or without the memorization score): the
    fraction of suffix positions whose argmax, given the TRUE preceding tokens, is the true token:
    a different, larger quantity; kept apart on purpose.

    How the greedy continuation is computed (`hf-causal`): greedy decoding reproduces a true token
    iff the argmax given the true tokens before it is that token, so the first suffix tokens are
    verified in parallel, in the prompt's own forward pass, as speculative decoding verifies a
    draft; decoding starts at the first divergence (or after the verified tokens), reusing that
    pass's KV cache, with the rows of several batches decoded together. With `teacher_forced`, the
    pass covers the whole suffix (it gives the teacher-forced statistics) and decoding starts at the
    first divergence. Without the memorization score, that pass alone decides exact match.
    The top-1/top-2 log-prob margin is recorded at each suffix position: along the greedy path by
    default, along the true suffix with `teacher_forced`. A margin near 0 is a near tie, where
    other arithmetic (another batch, another machine) could pick the other token.

    With `prefix_lengths`, the suffix is the m tokens after the longest prefix, and each prefix
    length uses the tokens just before it. Text is split as k = `prefix_tokens` tokens then m.
    """

    name = "extraction.discoverable"
    summary = "greedy extraction of training suffixes from training prefixes (exact rate, memorization score)"
    Params = DiscoverableParams
    requires = frozenset({"logprobs", "generate"})
    batches_per_map = 3  # hf-causal decodes the rows of up to three batches together (DECODE_POOL_BATCHES)
    metrics = (
        MetricSpec("extractable_rate", "share of samples whose greedy continuation equals the true suffix", True,
                   "exact"),
        MetricSpec("n_extractable", "number of samples extracted exactly", True),
        MetricSpec("memorization_score_mean", "mean fraction of suffix positions reproduced by greedy decoding",
                   True, "memorization_score"),
        MetricSpec("teacher_forced_accuracy_mean", "mean fraction of suffix positions whose argmax given the true "
                                                   "prefix is the true token", True,
                   "teacher_forced_accuracy"),
        MetricSpec("prefix_match_length_mean", "mean number of suffix tokens reproduced before the first error",
                   True, "first_divergence"),
    )

    @classmethod
    def produced_metrics(cls, params: DiscoverableParams) -> list[str]:
        names = cls.metric_names()
        if not params.memorization_score:
            return [n for n in names if n != "memorization_score_mean"]
        return names if params.teacher_forced else [n for n in names if n != "teacher_forced_accuracy_mean"]

    @classmethod
    def scores_for_others(cls, params: DiscoverableParams) -> frozenset[Hashable]:
        if not params.memorization_score or params.teacher_forced:  # these score every sequence anyway
            return frozenset()
        return frozenset({scored_key(params.prefix_tokens, params.suffix_tokens), SCORED_SAMPLES})

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        p = self.params
        units = prefix_suffix_units(samples, context.model, context.warn, p.longest_prefix(), p.suffix_tokens)
        report_cuts(units, p.prefix_tokens, p.suffix_tokens, context)
        return units

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["context"]) + len(unit["suffix"])

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        p, model = self.params, context.model
        sequences = [sequence(u, p.prefix_tokens) for u in batch]
        prompts = [prompt_length(u, p.prefix_tokens) for u in batch]
        if p.memorization_score and not p.teacher_forced:
            shared = shared_rows(batch, p.prefix_tokens, p.suffix_tokens, context.scored_by_others)
            paths = model.greedy_paths(sequences, prompts, scored_too=shared) if shared else \
                model.greedy_paths(sequences, prompts)
            generated = [path.tokens for path in paths]
            decisions = [path_decision(u, path) for u, path in zip(batch, paths, strict=True)]
        else:
            if p.memorization_score:
                pairs = model.greedy_continuation(sequences, prompts)
                scores, generated = [s for s, _ in pairs], [g for _, g in pairs]
            else:
                scores, generated = model.score(sequences), [None] * len(batch)
            decisions = [greedy_decision(u, score, p.prefix_tokens) for u, score in zip(batch, scores, strict=True)]
        curve = {}
        for length in p.prefix_lengths or []:
            scores = model.score([sequence(u, length) for u in batch])
            curve[length] = [greedy_decision(u, s, length)["exact"] for u, s in zip(batch, scores, strict=True)]
        records = []
        for i, (unit, decision, gen) in enumerate(zip(batch, decisions, generated, strict=True)):
            m = len(unit["suffix"])
            record = {"id": unit["sample"].id, "prefix": model.decode(unit["context"][-p.prefix_tokens:]),
                      "suffix": model.decode(unit["suffix"]), **decision,
                      **cut_tokens(unit, p.prefix_tokens, p.suffix_tokens)}
            if gen is not None:
                record["generated"] = model.decode(gen)
                record["memorization_score"] = sum(a == b for a, b in zip(gen, unit["suffix"], strict=True)) / m
                record["generated_ids"] = gen
            record["suffix_ids"] = unit["suffix"]
            if curve:
                record["exact_by_prefix_length"] = {str(length): flags[i] for length, flags in curve.items()}
            records.append(record)
        return records

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        exact = [r["exact"] for r in records]
        metrics = [rate_metric("extractable_rate", sum(exact), len(exact)),
                   Metric("n_extractable", float(sum(exact)), n=len(exact))]
        if self.params.memorization_score:
            scores = [r["memorization_score"] for r in records]
            metrics.append(mean_metric("memorization_score_mean", scores, seed=context.seed))
            context.artifact("memorization_score_histogram",
                             histogram_counts(scores, self.params.histogram_bins, 0.0, 1.0))
        if "teacher_forced_accuracy_mean" in self.produced_metrics(self.params):
            metrics.append(mean_metric("teacher_forced_accuracy_mean",
                                       [r["teacher_forced_accuracy"] for r in records], seed=context.seed))
        metrics.append(mean_metric("prefix_match_length_mean", [r["first_divergence"] for r in records],
                                   seed=context.seed))
        if self.params.prefix_lengths:
            curve = []
            for length in sorted(set(self.params.prefix_lengths)):
                hits = sum(r["exact_by_prefix_length"][str(length)] for r in records)
                rate = rate_metric("rate", hits, len(records))
                curve.append({"prefix_tokens": length, "extractable_rate": rate.value, "ci_low": rate.ci_low,
                              "ci_high": rate.ci_high, "n_extractable": hits})
            context.artifact("extraction_vs_prefix_length", curve)
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return discoverable_sections(evaluation, records)


def path_decision(unit: dict[str, Any], path: Any) -> dict[str, Any]:
    """What the greedy path says about the suffix, and its margins (near ties along the path)."""
    truth = unit["suffix"]
    first = next((j for j, (a, b) in enumerate(zip(path.tokens, truth, strict=True)) if a != b), len(truth))
    margins = np.asarray(path.margins, dtype=float)
    return {"exact": first == len(truth), "first_divergence": first,
            "margins": [round(x, 5) for x in margins.tolist()], "min_margin": round(float(margins.min()), 6)}


def greedy_decision(unit: dict[str, Any], score: Any, prefix_len: int) -> dict[str, Any]:
    """What one teacher-forced pass says about greedy decoding of the suffix."""
    start = prompt_length(unit, prefix_len) - 1
    positions = slice(start, start + len(unit["suffix"]))
    predicted = score.argmax[positions].astype(int).tolist()
    truth = unit["suffix"]
    matches = [a == b for a, b in zip(predicted, truth, strict=True)]
    first = matches.index(False) if False in matches else len(truth)
    margins = score.margin[positions].astype(float)
    return {"exact": first == len(truth), "first_divergence": first,
            "teacher_forced_accuracy": sum(matches) / len(truth), "predicted_ids": predicted,
            "margins": [round(x, 5) for x in margins.tolist()], "min_margin": round(float(margins.min()), 6),
            "suffix_logprob": float(score.logprob[positions].astype(np.float64).sum())}
