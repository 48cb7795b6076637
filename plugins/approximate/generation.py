"""Generations from training prefixes, as both `approximate.*` methods make and score them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memeval.api import Sample
from memeval_plugins.approximate.params import DecodingParams, ScoringParams, is_approximate
from memeval_plugins.approximate.scoring import best_of
from memeval_plugins.extraction.units import prefix_suffix_units, prompt_length, sequence


def generate(model: Any, units: list[dict[str, Any]], params: DecodingParams, seed: int) -> list[list[list[int]]]:
    """n continuations of each unit's prompt, as many tokens as its suffix. Greedy decoding goes
    through `greedy_paths`, the cached call `extraction.discoverable` makes on the same prompts;
    sampling through `generate`, cached per prompt and sample index."""
    if params.decoding == "greedy":
        paths = model.greedy_paths([sequence(u, params.prefix_tokens) for u in units],
                                   [prompt_length(u, params.prefix_tokens) for u in units])
        return [[list(path.tokens)] for path in paths]
    n = params.num_samples
    prompts = [u["lead"] + u["context"][-params.prefix_tokens:] for u in units for _ in range(n)]
    out = model.generate(prompts, params.suffix_tokens, do_sample=True, temperature=params.temperature,
                         top_k=params.top_k, top_p=params.top_p, seed=seed,
                         sample_indices=[k for _ in units for k in range(n)])
    return [[list(ids) for ids in out[i * n:(i + 1) * n]] for i in range(len(units))]


def scored_side(model: Any, generations: list[list[list[int]]], params: ScoringParams,
                scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per unit: every generation with its scores, the best of them and the criteria verdicts."""
    out, k = [], 0
    for gens in generations:
        each = []
        for ids in gens:
            each.append({"text": model.decode(ids), "ids": ids, **scores[k]})
            k += 1
        best = best_of(each)
        approximate = {c: is_approximate(c, best, params.thresholds) for c in params.chosen_criteria()}
        best.update(approximate=approximate, approximate_any=any(approximate.values()))
        best["approx_not_verbatim"] = best["approximate_any"] and not best["exact"]
        if len(gens) > 1:
            best["generations"] = [{k2: v for k2, v in g.items() if k2 != "ids"} for g in each]
        out.append(best)
    return out


def score_pairs(model: Any, units: list[dict[str, Any]], generations: list[list[list[int]]]
                ) -> list[tuple[str, list[int], str, list[int]]]:
    return [(model.decode(ids), ids, unit["truth"], unit["suffix"])
            for unit, gens in zip(units, generations, strict=True) for ids in gens]


def split_units(samples: list[Sample], model: Any, params: DecodingParams, warn: Callable[[str], None]
                ) -> list[dict[str, Any]]:
    """Prefix/suffix units in `model`'s tokens (as extraction.discoverable splits them), with the
    decoded prompt and truth."""
    units = prefix_suffix_units(samples, model, warn, params.prefix_tokens, params.suffix_tokens)
    for unit in units:
        unit["prompt_text"] = model.decode(unit["context"][-params.prefix_tokens:])
        unit["truth"] = model.decode(unit["suffix"])
    return units


