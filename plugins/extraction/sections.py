"""The report sections of the `extraction.*` methods (each method's `report_sections` calls its
builder here): plots and tables built from what a run kept, with no model loaded."""

from __future__ import annotations

import math

from memeval.api import (
    TOP_N,
    ComparedSample,
    Comparison,
    EvaluationResult,
    Histogram,
    LinePlot,
    Records,
    Section,
    Sensitive,
    Series,
    Table,
    histogram_of,
)


def discoverable_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    blocks: list = []
    histogram = evaluation.artifacts.get("memorization_score_histogram")
    if histogram:
        blocks.append(Histogram("Memorization score (fraction of suffix tokens greedy decoding gets right)",
                                "memorization score", histogram["edges"], histogram["counts"]))
    curve = evaluation.artifacts.get("extraction_vs_prefix_length")
    if curve:
        xs = [float(p["prefix_tokens"]) for p in curve]
        blocks.append(LinePlot("Extraction vs. context (prefix) length", "prefix tokens", "extractable rate",
                               [Series("extractable rate", xs, [p["extractable_rate"] for p in curve],
                                       [p["ci_low"] for p in curve], [p["ci_high"] for p in curve])],
                               y_range=(0.0, 1.0), markers=True))
    key = lambda r: (r.get("memorization_score", r.get("teacher_forced_accuracy", 0.0)), r["first_divergence"])  # noqa: E731
    top = records.top(TOP_N, key=key)
    if top and "generated" in top[0]:
        blocks.append(Comparison("Most memorized samples: greedy continuation of the prefix vs. the true suffix",
                                 [ComparedSample(r["id"], r["suffix"], r["generated"], r["prefix"],
                                                 {"exact": r["exact"], "memorization score": r["memorization_score"],
                                                  "first divergence": r["first_divergence"]}) for r in top],
                                 "true suffix", "greedy continuation"))
    elif top:
        blocks.append(Table(["id", "exact", "teacher-forced accuracy", "first divergence", "suffix"],
                            [[r["id"], r["exact"], r["teacher_forced_accuracy"], r["first_divergence"],
                              Sensitive(r["suffix"])] for r in top], title="Most memorized samples"))
    return [Section("Verbatim extraction", blocks)]


def probabilistic_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    log10 = [r["log_p_z"] / math.log(10) for r in records if r["log_p_z"] is not None and r["log_p_z"] > -math.inf]
    blocks: list = [histogram_of(log10, "Probability of sampling the exact suffix", "log10 p(suffix | prefix)")]
    top = records.top(TOP_N, key=lambda r: r["log_p_z"] if r["log_p_z"] is not None else -math.inf)
    blocks.append(Table(["id", "p(suffix)", "P(extracted within n queries)", "queries for p", "greedy exact",
                         "suffix"],
                        [[r["id"], r["p_z"], r["probability_within_n"], r["queries_needed"], r["greedy_exact"],
                          Sensitive(r["suffix"])] for r in top], title="Most extractable suffixes"))
    return [Section("Probabilistic extraction", [b for b in blocks if b is not None])]


def exposure_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    blocks: list = [histogram_of([r["exposure"] for r in records], "Exposure of each canary", "exposure (bits)")]
    top = records.top(TOP_N, key=lambda r: r["exposure"])
    blocks.append(Table(["id", "exposure (bits)", "of at most", "estimate", "rank"],
                        [[r["id"], r["exposure"], math.log2(r["space"]), r["method"], r.get("rank")] for r in top],
                        title="Most exposed canaries"))
    return [Section("Canary exposure", [b for b in blocks if b is not None])]


def untargeted_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    blocks = [Table(["#", "sample", "memorized", "score", "text"],
                    [[i + 1, c["id"], c["memorized"], c["score"], Sensitive(c["text"])] for i, c in enumerate(tops)],
                    title=f"Top candidates by {ranking}")
              for ranking, tops in evaluation.artifacts.get("top_candidates", {}).items()]
    return [Section("Untargeted extraction", blocks, "memorized: shares a long character span with a training "
                                                     "document")]
