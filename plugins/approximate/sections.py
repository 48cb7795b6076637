"""The report sections of the `approximate.*` methods (each method's `report_sections` calls its
builder here), built from what a run kept, with no model loaded."""

from __future__ import annotations

from typing import Any

from memeval.api import (
    TOP_N,
    ComparedSample,
    Comparison,
    EvaluationResult,
    Histogram,
    Records,
    Section,
    Table,
)
from memeval_plugins.approximate.params import SCORE_NAMES


def _histograms(distributions: dict[str, Any], prefix: str = "") -> list[Histogram]:
    return [Histogram(f"{prefix}{name}", name.replace("_", " "), d["edges"], d["counts"])
            for name, d in distributions.items()]


def _scores(side: dict[str, Any]) -> dict[str, Any]:
    shown = {"exact": side["exact"], "approximate": side["approximate_any"]}
    return shown | {name: side[name] for name in SCORE_NAMES if name in side}


def similarity_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    criteria = evaluation.artifacts.get("criteria", [])
    blocks: list = [Table(["criterion", "score", "rule", "threshold", "approximate", "of which not verbatim",
                           "rate", "95% CI"],
                          [[c["criterion"], c["score"], c["rule"], c["threshold"], c["n_approximate"],
                            c["n_approx_not_verbatim"], c["rate"], f"[{c['ci_low']:.3g}, {c['ci_high']:.3g}]"]
                           for c in criteria], title="Approximate memorization by criterion")]
    blocks += _histograms(evaluation.artifacts.get("score_distributions", {}))
    closest = records.top(TOP_N, key=lambda r: (r["approx_not_verbatim"], r["approximate_any"], -r.get(
        "edit_distance", 0.0), r.get("chrf", 0.0)))
    blocks.append(Comparison("Closest generations: approximately memorized first, verbatim ones last",
                             [ComparedSample(r["id"], r["truth"], r["generation"], r["prefix"], _scores(r)) for r in closest],
                             "true suffix", "generation"))
    return [Section("Approximate memorization", blocks,
                    "approximate but not verbatim: what an exact-match check would have called safe")]


def compare_sections(evaluation: EvaluationResult, records: Records) -> list[Section]:
    criteria = evaluation.artifacts.get("criteria", [])
    blocks: list = [Table(["criterion", "rule", "threshold", "base rate", "mitigated rate", "reduction", "95% CI"],
                          [[c["criterion"], c["rule"], c["threshold"], c["base_rate"], c["mitigated_rate"],
                            c["reduction"], f"[{c['ci_low']:.3g}, {c['ci_high']:.3g}]"] for c in criteria],
                          title="Reduction by criterion (paired: the same prefixes)")]
    blocks += _histograms(evaluation.artifacts.get("perplexity", {}), "perplexity of the generations: ")
    top = records.top(TOP_N, key=lambda r: (r["base"]["approximate_any"], r["base"].get("chrf", 0.0)))
    for side in ("base", "mitigated"):
        blocks.append(Comparison(f"{side} model: most memorized by the base model",
                                 [ComparedSample(r["id"], r[side].get("truth", r["truth"]), r[side]["generation"],
                                                 r["prefix"], _scores(r[side]) | {"perplexity": r[side]["perplexity"]})
                                  for r in top], "true suffix", f"{side} generation"))
    return [Section("Mitigation", blocks)]
