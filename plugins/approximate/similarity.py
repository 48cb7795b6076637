"""`approximate.similarity`: how often, and how closely, a model reproduces training suffixes."""

from __future__ import annotations

from typing import Any

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
from memeval_plugins.approximate.generation import generate, score_pairs, scored_side, split_units
from memeval_plugins.approximate.params import (
    CRITERIA,
    SIMILARITIES,
    ScoringParams,
    criterion_rule,
    score_range,
    scores_of,
)
from memeval_plugins.approximate.scoring import (
    check_bertscore,
    make_scorer,
    score_distribution,
    warn_blank,
)
from memeval_plugins.approximate.sections import similarity_sections
from memeval_plugins.extraction.units import cut_tokens, report_cuts


class SimilarityParams(ScoringParams):
    histogram_bins: int = Field(20, ge=1, le=100, description="bins of each score's histogram artifact")
    top_n: int = Field(10, ge=1, description="approximate-but-not-verbatim samples kept in the top artifact")


def _similarity_metrics() -> tuple[MetricSpec, ...]:
    rates = [MetricSpec("exact_rate", "share of samples whose generation equals the true suffix", True,
                        per_sample="exact")]
    for c in (*CRITERIA, "any"):
        what = "any criterion" if c == "any" else c
        whole = c == "any"  # the per-sample fields `memeval compare` can pair
        rates.append(MetricSpec(f"approx_rate_{c}", f"share of samples approximately memorized by {what}", True,
                                per_sample="approximate_any" if whole else None))
        rates.append(MetricSpec(f"approx_not_verbatim_rate_{c}", f"share of samples approximately memorized by "
                                                                 f"{what} but not verbatim", True,
                                per_sample="approx_not_verbatim" if whole else None))
    rates.append(MetricSpec("missed_by_verbatim_share", "among samples approximate by any criterion, the share "
                                                        "that are not verbatim", True))
    means = [MetricSpec(f"{s}_mean", f"mean over samples of {s}", True, per_sample=s) for s in SIMILARITIES]
    means.append(MetricSpec("edit_distance_mean", "mean over samples of the normalized edit distance", False,
                            per_sample="edit_distance"))
    return (*rates, *means)


class Similarity(Method):
    """Approximate memorization (Ippolito et al. 2022): prompt with k training tokens, generate m
    (greedy, or n samples), and score each generation against the true suffix with sentence BLEU
    and chrF (sacrebleu, 0-1), BERTScore P/R/F1 (bert-score, local encoder) and the normalized
    edit distance (Levenshtein over tokens / the longer length). With n samples a sample's score is
    the best of its n. A sample is approximately memorized by a criterion when its score passes the
    threshold (BLEU >= 0.75, chrF >= 0.75, BERTScore F1 >= 0.8, edit distance <= 0.1 by default);
    approximate-but-not-verbatim samples are those an exact-match test calls safe.
    """

    name = "approximate.similarity"
    summary = "BLEU, chrF, BERTScore and edit distance of generations to training suffixes"
    Params = SimilarityParams
    requires = frozenset({"logprobs", "generate"})
    metrics = _similarity_metrics()

    @classmethod
    def produced_metrics(cls, params: SimilarityParams) -> list[str]:
        chosen = params.chosen_criteria()
        names = ["exact_rate"]
        for c in (*chosen, "any"):
            names += [f"approx_rate_{c}", f"approx_not_verbatim_rate_{c}"]
        return [*names, "missed_by_verbatim_share", *(f"{s}_mean" for s in scores_of(params))]

    @classmethod
    def check_references(cls, params: SimilarityParams, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        return check_bertscore(params, suite)

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        units = split_units(samples, context.model, self.params, context.warn)
        report_cuts(units, self.params.prefix_tokens, self.params.suffix_tokens, context)
        self.scorer = make_scorer(self.params, context, [u["truth"] for u in units])
        return units

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["context"]) + len(unit["suffix"])

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        model = context.model
        generations = generate(model, batch, self.params, context.seed)
        pairs = score_pairs(model, batch, generations)
        scores = self.scorer.score(pairs)
        warn_blank(pairs, self.scorer, context)
        sides = scored_side(model, generations, self.params, scores)
        return [{"id": u["sample"].id, "prefix": u["prompt_text"], "truth": u["truth"], **side,
                 "suffix_ids": u["suffix"], **cut_tokens(u, self.params.prefix_tokens, self.params.suffix_tokens)}
                for u, side in zip(batch, sides, strict=True)]

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        p, n = self.params, len(records)
        exact = sum(r["exact"] for r in records)
        metrics = [rate_metric("exact_rate", exact, n)]
        table = []
        for c in (*p.chosen_criteria(), "any"):
            hits = [r["approximate_any"] if c == "any" else r["approximate"][c] for r in records]
            hidden = sum(h and not r["exact"] for h, r in zip(hits, records, strict=True))
            rate = rate_metric(f"approx_rate_{c}", sum(hits), n)
            metrics += [rate, rate_metric(f"approx_not_verbatim_rate_{c}", hidden, n)]
            table.append({"criterion": c, **criterion_rule(c, p.thresholds), "n_approximate": sum(hits),
                          "n_approx_not_verbatim": hidden, "rate": rate.value, "ci_low": rate.ci_low,
                          "ci_high": rate.ci_high})
        approx = sum(r["approximate_any"] for r in records)
        metrics.append(rate_metric("missed_by_verbatim_share", sum(r["approx_not_verbatim"] for r in records), approx))
        distributions = {}
        for name in scores_of(p):
            values = [r[name] for r in records]
            metrics.append(mean_metric(f"{name}_mean", values, seed=context.seed))
            distributions[name] = score_distribution(values, p.histogram_bins, *score_range(name, p))
        context.artifact("criteria", table)
        context.artifact("score_distributions", distributions)
        hidden_records = sorted((r for r in records if r["approx_not_verbatim"]),
                                key=lambda r: (r["edit_distance"], -r["chrf"]))[:p.top_n]
        context.artifact("top_approx_not_verbatim", [
            {"id": r["id"], "prefix": r["prefix"], "truth": r["truth"], "generation": r["generation"],
             **{s: r[s] for s in scores_of(p)}} for r in hidden_records])
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return similarity_sections(evaluation, records)


