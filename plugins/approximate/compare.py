"""`approximate.compare`: a base model against a mitigated one on the same prefixes (e.g. one
fine-tuned to avoid its memorized suffixes, Kassem et al. 2023): the reduction per criterion, and
the fluency cost as the perplexity of each model's generations under a scoring model."""

from __future__ import annotations

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
    UsageError,
    mean_metric,
    rate_metric,
)
from memeval_plugins.approximate.generation import generate, score_pairs, scored_side, split_units
from memeval_plugins.approximate.params import (
    CRITERIA,
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
from memeval_plugins.approximate.sections import compare_sections
from memeval_plugins.extraction.units import cut_tokens, report_cuts


class CompareParams(ScoringParams):
    mitigated_model: str = Field(description="suite model compared against the evaluation's (base) model")
    scoring_model: str | None = Field(None, description="suite model whose perplexity of each generation "
                                                        "measures fluency (default: the evaluation's model)")
    histogram_bins: int = Field(20, ge=1, le=100, description="bins of each score and perplexity histogram artifact")


def _compare_metrics() -> tuple[MetricSpec, ...]:
    specs = []
    for c in (*CRITERIA, "any", "exact"):
        rate = "exact_rate" if c == "exact" else f"approx_rate_{c}"
        what = "verbatim" if c == "exact" else f"approximately ({c})"
        specs += [MetricSpec(f"base_{rate}", f"share of samples the base model reproduces {what}", True),
                  MetricSpec(f"mitigated_{rate}", f"share of samples the mitigated model reproduces {what}", True),
                  MetricSpec(f"reduction_{c}", f"base minus mitigated share reproduced {what} (paired CI)", False)]
    specs += [MetricSpec("base_perplexity_mean", "mean perplexity of the base model's generations under the "
                                                 "scoring model", None),
              MetricSpec("mitigated_perplexity_mean", "mean perplexity of the mitigated model's generations under "
                                                      "the scoring model", None),
              MetricSpec("perplexity_increase", "mean over samples of mitigated minus base perplexity (paired "
                                                "CI): the fluency cost", None)]
    return tuple(specs)


class Compare(Method):
    """A base model (the evaluation's) against a mitigated one on the same prefixes.

    Both generate from every prefix as `approximate.similarity` does and are scored against the
    true suffix. Per criterion (and for any criterion and verbatim): each model's rate and the
    reduction base - mitigated, with a paired bootstrap CI over samples (the same prefixes). The
    fluency cost is the perplexity of each model's generations, given the prefix, under a scoring
    model (default: the base model): `perplexity_increase` = mean(mitigated - base).
    """

    name = "approximate.compare"
    summary = "reduction of approximate memorization from a base to a mitigated model, and its fluency cost"
    Params = CompareParams
    requires = frozenset({"logprobs", "generate"})
    model_params = ("mitigated_model", "scoring_model")
    metrics = _compare_metrics()

    @classmethod
    def produced_metrics(cls, params: CompareParams) -> list[str]:
        names = []
        for c in (*params.chosen_criteria(), "any", "exact"):
            rate = "exact_rate" if c == "exact" else f"approx_rate_{c}"
            names += [f"base_{rate}", f"mitigated_{rate}", f"reduction_{c}"]
        return [*names, "base_perplexity_mean", "mitigated_perplexity_mean", "perplexity_increase"]

    @classmethod
    def check_references(cls, params: CompareParams, suite: Any, index: int) -> list[tuple[tuple[Any, ...], str]]:
        problems = check_bertscore(params, suite)
        model = suite.spec.evaluations[index].model
        if model is not None and params.mitigated_model == model:
            problems.append((("params", "mitigated_model"), "the mitigated model is the evaluation's model itself"))
        return problems

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        p = self.params
        base = split_units(samples, context.model, p, context.warn)
        report_cuts(base, p.prefix_tokens, p.suffix_tokens, context)
        other = {u["sample"].id: u for u in split_units(samples, context.model_named(p.mitigated_model), p,
                                                        lambda message: None)}
        units = [{"base": u, "mitigated": other[u["sample"].id]} for u in base if u["sample"].id in other]
        differ = sum(u["base"]["truth"] != u["mitigated"]["truth"] for u in units)
        if differ:
            context.warn(f"the two models tokenize {differ} sample(s) differently: each model is scored against "
                         f"its own {p.suffix_tokens}-token suffix")
        self.scorer = make_scorer(p, context, [u["base"]["truth"] for u in units])
        return units

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["base"]["context"]) + len(unit["base"]["suffix"])

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        p = self.params
        models = {"base": context.model, "mitigated": context.model_named(p.mitigated_model)}
        scoring = context.model_named(p.scoring_model) if p.scoring_model else context.model
        generations, pairs = {}, []
        for side, model in models.items():
            units = [u[side] for u in batch]
            generations[side] = generate(model, units, p, context.seed)
            pairs += score_pairs(model, units, generations[side])
        scores = self.scorer.score(pairs)  # one call: a reference both models share is encoded once
        warn_blank(pairs, self.scorer, context)
        records = [{"id": u["base"]["sample"].id, "prefix": u["base"]["prompt_text"], "truth": u["base"]["truth"],
                    **cut_tokens(u["base"], p.prefix_tokens, p.suffix_tokens)} for u in batch]
        start = 0
        for side, model in models.items():
            units = [u[side] for u in batch]
            count = sum(len(g) for g in generations[side])
            sides = scored_side(model, generations[side], p, scores[start:start + count])
            start += count
            nll = fluency(scoring, model, units, generations[side], p.prefix_tokens)
            for record, unit, result, loss in zip(records, units, sides, nll, strict=True):
                record[side] = {**result, "nll": loss, "perplexity": float(np.exp(loss))}
                if unit["truth"] != record["truth"]:
                    record[side]["truth"] = unit["truth"]
        return records

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        p, n = self.params, len(records)
        metrics, table = [], []
        for c in (*p.chosen_criteria(), "any", "exact"):
            flags = {side: np.array([flag(r[side], c) for r in records], dtype=np.float64)
                     for side in ("base", "mitigated")}
            rate = "exact_rate" if c == "exact" else f"approx_rate_{c}"
            reduction = mean_metric(f"reduction_{c}", flags["base"] - flags["mitigated"], seed=context.seed,
                                    label="paired difference")
            metrics += [rate_metric(f"base_{rate}", int(flags["base"].sum()), n),
                        rate_metric(f"mitigated_{rate}", int(flags["mitigated"].sum()), n), reduction]
            table.append({"criterion": c, **(criterion_rule(c, p.thresholds) if c != "exact" else
                                             {"score": None, "rule": "verbatim", "threshold": None}),
                          "base_rate": float(flags["base"].mean()), "mitigated_rate": float(flags["mitigated"].mean()),
                          "reduction": reduction.value, "ci_low": reduction.ci_low, "ci_high": reduction.ci_high})
        ppl = {side: [r[side]["perplexity"] for r in records] for side in ("base", "mitigated")}
        metrics += [mean_metric("base_perplexity_mean", ppl["base"], seed=context.seed),
                    mean_metric("mitigated_perplexity_mean", ppl["mitigated"], seed=context.seed),
                    mean_metric("perplexity_increase", np.subtract(ppl["mitigated"], ppl["base"]), seed=context.seed,
                                label="paired difference")]
        context.artifact("criteria", table)
        context.artifact("score_distributions", {
            side: {name: score_distribution([r[side][name] for r in records], p.histogram_bins, *score_range(name, p))
                   for name in [*scores_of(p)]} for side in ("base", "mitigated")})
        context.artifact("perplexity", {side: score_distribution(values, p.histogram_bins) for side, values in ppl.items()})
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return compare_sections(evaluation, records)


def flag(side: dict[str, Any], criterion: str) -> bool:
    if criterion == "exact":
        return side["exact"]
    return side["approximate_any"] if criterion == "any" else side["approximate"][criterion]


def fluency(scoring: Any, model: Any, units: list[dict[str, Any]], generations: list[list[list[int]]],
            prefix_tokens: int) -> list[float]:
    """Per unit, the mean over its generations of the mean token NLL of the generation given the
    prompt, under the scoring model. The same model scores its own token ids; another model scores
    the texts, retokenized (the prompt, then the generation)."""
    same = getattr(scoring, "model_id", None) == getattr(model, "model_id", None)
    sequences, spans = [], []
    for unit, gens in zip(units, generations, strict=True):
        for ids in gens:
            if same:
                prompt, new = unit["lead"] + unit["context"][-prefix_tokens:], list(ids)
            else:
                lead = scoring.tokenize([""])[0]
                prompt_ids, new = scoring.tokenize([unit["prompt_text"], model.decode(ids)], add_special_tokens=False)
                prompt = list(lead) + list(prompt_ids)
            if not new:
                raise UsageError("a generation is empty under the scoring model's tokenizer; its perplexity is "
                                 "undefined")
            sequences.append(list(prompt) + list(new))
            spans.append((len(prompt), len(new)))
    token_scores = scoring.score(sequences)
    nll = [-float(np.mean(s.logprob[start - 1:start - 1 + length], dtype=np.float64))
           for s, (start, length) in zip(token_scores, spans, strict=True)]
    out, k = [], 0
    for gens in generations:
        out.append(float(np.mean(nll[k:k + len(gens)])))
        k += len(gens)
    return out
