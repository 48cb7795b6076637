"""What the prefix/suffix methods share: their params, the split of each sample into the model's
prefix and suffix tokens, and the one check that the model can see both at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from memeval.api import SCORED_SAMPLES, Context, Params, Sample, UsageError


class PrefixSuffixParams(Params):
    prefix_tokens: int = Field(32, ge=1, description="k: tokens of training text given as the prompt")
    suffix_tokens: int = Field(32, ge=1, description="m: tokens the model must reproduce")
    batch_size: int | None = Field(None, ge=1, description="sequences per forward pass (default: the model's)")


def lead_tokens(model: Any) -> list[int]:
    """What the tokenizer puts before any text (a BOS token, or nothing)."""
    return list(model.tokenize([""])[0])


def prefix_suffix_units(samples: list[Sample], model: Any, warn: Callable[[str], None], prefix_tokens: int,
                        suffix_tokens: int) -> list[dict[str, Any]]:
    """Split each sample into `context` (up to `prefix_tokens` tokens before the suffix) and the
    `suffix_tokens` that follow, as token ids of the model.

    Text is tokenized without special tokens and the tokenizer's lead (BOS) is put in front;
    token-id samples are used as given; prefix/suffix samples keep their own split. Samples too
    short for both parts are skipped with a warning. Units longer than the model's context are
    refused (`check_fits_context`). A prefix/suffix sample whose given prefix or suffix is longer
    than the prompt or suffix measured keeps its lengths (`given_prefix`, `given_suffix`): the
    methods report those cuts (`report_cuts`), as an error unless the suite says `on_truncate: warn`.
    """
    lead = lead_tokens(model)
    texts = [s for s in samples if s.tokens is None and s.prefix is None]
    text_ids = iter(model.tokenize([s.text or "" for s in texts], add_special_tokens=False) if texts else [])
    pairs = [s for s in samples if s.tokens is None and s.prefix is not None]
    pair_prefix = iter(model.tokenize([s.prefix for s in pairs], add_special_tokens=False) if pairs else [])
    pair_suffix = iter(model.tokenize([s.suffix or "" for s in pairs], add_special_tokens=False) if pairs else [])
    units, short = [], 0
    for sample in samples:
        if sample.tokens is not None:
            head, content, rest = [], list(sample.tokens), None
        elif sample.prefix is not None:
            head, content, rest = lead, list(next(pair_prefix)), list(next(pair_suffix))
        else:
            head, content, rest = lead, list(next(text_ids)), None
        if rest is None:  # one sequence: the suffix follows the first `prefix_tokens` tokens
            if len(content) < prefix_tokens + suffix_tokens:
                short += 1
                continue
            content, rest = content[:prefix_tokens], content[prefix_tokens:]
        if len(content) < 1 or len(rest) < suffix_tokens:
            short += 1
            continue
        units.append({"sample": sample, "lead": head, "context": content[-prefix_tokens:],
                      "suffix": rest[:suffix_tokens], "given_prefix": len(content) if sample.prefix is not None else None,
                      "given_suffix": len(rest) if sample.prefix is not None else None,
                      # lead + context + suffix is the sample's whole token sequence (what lm.loss scores)
                      "whole": sample.prefix is None and len(content) <= prefix_tokens and len(rest) == suffix_tokens})
    if short:
        warn(f"{short} sample(s) too short for {prefix_tokens} prefix + {suffix_tokens} suffix tokens "
             f"were skipped")
    check_fits_context(units, model, prefix_tokens, suffix_tokens)
    return units


def scored_key(prefix_tokens: int, suffix_tokens: int) -> tuple[str, int, int]:
    """`Method.scored_sequences` of a method that scores each unit's `sequence` at these lengths."""
    return ("prefix_suffix", prefix_tokens, suffix_tokens)


def shared_rows(units: list[dict[str, Any]], prefix_tokens: int, suffix_tokens: int,
                scored_by_others: frozenset[Any]) -> list[bool] | None:
    """Which units' `sequence` at these lengths other evaluations score (`Context.scored_by_others`):
    all of them when a method reads the same prefix and suffix lengths, the units that are their
    sample's whole sequence when one reads whole samples; None when none are."""
    if scored_key(prefix_tokens, suffix_tokens) in scored_by_others:
        return [True] * len(units)
    if SCORED_SAMPLES in scored_by_others and any(u["whole"] for u in units):
        return [u["whole"] for u in units]
    return None


def cut_tokens(unit: dict[str, Any], prompt_tokens: int, suffix_tokens: int) -> dict[str, int]:
    """How many tokens of a prefix/suffix sample's own prefix and suffix are not measured (0 for
    text samples, whose split is the method's)."""
    if unit["given_prefix"] is None:
        return {"prefix_cut_tokens": 0, "suffix_cut_tokens": 0}
    return {"prefix_cut_tokens": max(0, unit["given_prefix"] - prompt_tokens),
            "suffix_cut_tokens": max(0, unit["given_suffix"] - suffix_tokens)}


def report_cuts(units: list[dict[str, Any]], prompt_tokens: int, suffix_tokens: int, context: Context) -> None:
    """Count the samples whose own prefix or suffix is cut, and say so through the context (an
    error under the suite's default `on_truncate: error`)."""
    cuts = [cut_tokens(u, prompt_tokens, suffix_tokens) for u in units]
    for part, limit in (("prefix", prompt_tokens), ("suffix", suffix_tokens)):
        cut = [c[f"{part}_cut_tokens"] for c in cuts if c[f"{part}_cut_tokens"]]
        if cut:
            context.truncated(len(cut), len(units), f"samples had their own {part} cut to {limit} tokens (by up "
                                                    f"to {max(cut)} tokens; raise {part}_tokens to measure it whole)")


def check_fits_context(units: list[dict[str, Any]], model: Any, prefix_tokens: int, suffix_tokens: int) -> None:
    """Refuse (a usage error, exit code 4) units whose lead + `prefix_tokens` + `suffix_tokens`
    exceed the model's context: the model could not see the prefix and the suffix at once."""
    limit = model.context_length
    lead = max((len(u["lead"]) for u in units), default=0)
    if limit and units and lead + prefix_tokens + suffix_tokens > limit:
        with_lead = f", {lead + prefix_tokens + suffix_tokens} with the tokenizer's BOS" if lead else ""
        raise UsageError(f"prefix + suffix ({prefix_tokens} + {suffix_tokens} tokens{with_lead}) exceed the "
                         f"model's context of {limit} tokens")


def prompt_length(unit: dict[str, Any], prefix_len: int) -> int:
    """Tokens before the suffix when the prompt is the last `prefix_len` context tokens."""
    return len(unit["lead"]) + len(unit["context"][-prefix_len:])


def sequence(unit: dict[str, Any], prefix_len: int) -> list[int]:
    """The unit's tokens when the prompt is the last `prefix_len` context tokens: lead, prompt, suffix."""
    return unit["lead"] + unit["context"][-prefix_len:] + unit["suffix"]
