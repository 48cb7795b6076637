"""`extraction.untargeted`: sample freely, rank, de-duplicate, check against the training corpus
(Carlini et al. 2021)."""

from __future__ import annotations

import zlib
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from memeval.api import (
    CorpusIndex,
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Sample,
    Section,
    Strict,
    corpus_fingerprint,
    rate_metric,
)
from memeval_plugins.extraction.sections import untargeted_sections
from memeval_plugins.extraction.units import lead_tokens

Ranking = Literal["perplexity", "zlib", "lowercase", "window", "reference"]
RANKINGS: tuple[str, ...] = ("perplexity", "zlib", "lowercase", "window", "reference")


class TemperatureDecay(Strict):
    start: float = Field(10.0, gt=0, description="temperature of the first generated token")
    steps: int = Field(20, ge=1, description="tokens over which it falls linearly to `temperature`")


class UntargetedParams(Params):
    corpus: str = Field(description="suite dataset of the training corpus to check candidates against (streamed)")
    num_samples: int = Field(200, ge=1, description="generations to draw")
    max_new_tokens: int = Field(48, ge=2, description="tokens generated per sample")
    top_k: int | None = Field(40, ge=1, description="sample from the k most likely tokens (none: all)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (without temperature_decay)")
    temperature_decay: TemperatureDecay | None = Field(None, description="e.g. {start: 10, steps: 20} as Carlini "
                                                                          "et al. 2021")
    prompts: str | None = Field(None, description="suite dataset whose texts' first tokens prompt the samples "
                                                  "(default: the tokenizer's BOS alone)")
    prompt_tokens: int = Field(8, ge=1, description="tokens of each prompt text given to the model (a "
                                                   "counted, requested cut)")
    reference_model: str | None = Field(None, description="a suite model whose perplexity the reference "
                                                          "ranking divides by")
    rankings: list[Ranking] | None = Field(None, description="default: all (reference only with reference_model)")
    window: int = Field(16, ge=2, description="tokens in the sliding window of the 'window' ranking")
    top_n: int = Field(20, ge=1, description="candidates per ranking checked for precision")
    match_chars: int = Field(32, ge=8, description="a candidate is memorized when it shares this many consecutive "
                                                   "characters with a corpus document")
    duplicate_overlap: float = Field(0.5, gt=0, le=1, description="candidates sharing more than this fraction of "
                                                                  "token trigrams are duplicates")

    def chosen_rankings(self) -> list[str]:
        if self.rankings is not None:
            return list(dict.fromkeys(self.rankings))
        return [r for r in RANKINGS if r != "reference" or self.reference_model is not None]

    @model_validator(mode="after")
    def _reference_needs_a_model(self) -> UntargetedParams:
        if "reference" in self.chosen_rankings() and self.reference_model is None:
            raise ValueError("ranking 'reference' needs 'reference_model'")
        return self


class Untargeted(Method):
    """Untargeted training-data extraction (Carlini et al. 2021).

    Draw `num_samples` generations (top-k sampling, optionally with the temperature falling from a
    high start over the first tokens; prompted by BOS or by the first tokens of a prompt dataset),
    score each, and rank them, higher = more likely memorized: perplexity: -(mean NLL of the
    generated tokens); zlib: -(mean NLL) / zlib-compressed bytes of the text; lowercase: -(NLL -
    NLL of the lower-cased text); window: -(lowest mean NLL over any `window` consecutive tokens);
    reference: -(NLL / NLL under the reference model), the paper's perplexity ratio.
    For each ranking, walk down the ranked list skipping near-duplicates (token-trigram overlap
    above `duplicate_overlap` with a kept candidate) and keep `top_n`; precision is the share of
    those found verbatim in the corpus (any `match_chars` consecutive characters). The corpus is
    indexed by streaming it into an on-disk n-gram table (cached by content hash), never held in
    memory. `memorized_distinct` counts memorized candidates left after de-duplication.
    """

    name = "extraction.untargeted"
    summary = "sample, rank (perplexity, zlib, lowercase, window, reference), de-duplicate, check against the corpus"
    Params = UntargetedParams
    requires = frozenset({"logprobs", "generate"})
    needs_dataset = False
    dataset_params = ("corpus", "prompts")
    model_params = ("reference_model",)
    metrics = (
        *(MetricSpec(f"{r}_precision", f"share of the top-N by {r} found in the corpus", True) for r in RANKINGS),
        MetricSpec("memorized_distinct", "distinct memorized strings among all samples", True),
        MetricSpec("memorized_fraction", "share of all samples containing corpus text", True),
    )

    @classmethod
    def produced_metrics(cls, params: UntargetedParams) -> list[str]:
        return [f"{r}_precision" for r in params.chosen_rankings()] + ["memorized_distinct", "memorized_fraction"]

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        p, model = self.params, context.model
        if p.prompts is not None:
            texts = [s.full_text or "" for s in context.dataset_named(p.prompts)]
            tokenized = model.tokenize(texts, add_special_tokens=False)
            cut = [len(ids) - p.prompt_tokens for ids in tokenized if len(ids) > p.prompt_tokens]
            context.truncated(len(cut), len(tokenized), f"prompts cut to their first {p.prompt_tokens} tokens "
                                                        f"(prompt_tokens; by up to {max(cut, default=0)})",
                              requested=True)
            prompts = [lead_tokens(model) + ids[:p.prompt_tokens] for ids in tokenized]
        else:
            prompts = [lead_tokens(model) or [model.tokenizer.eos_token_id]]
        self.index = self._corpus_index(context)
        return [{"index": i, "prompt": prompts[i % len(prompts)]} for i in range(p.num_samples)]

    def _corpus_index(self, context: Any) -> Any:
        fingerprint = corpus_fingerprint(context.stream_texts(self.params.corpus))
        return CorpusIndex.open_or_build(context.cache_dir / "corpus-index", fingerprint, self.params.match_chars,
                                         context.stream_texts(self.params.corpus))

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["prompt"])

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        p, model = self.params, context.model
        decay = (p.temperature_decay.start, p.temperature_decay.steps) if p.temperature_decay else None
        generated = model.generate([u["prompt"] for u in batch], p.max_new_tokens, do_sample=True,
                                   temperature=p.temperature, top_k=p.top_k, temperature_decay=decay,
                                   seed=context.seed, sample_indices=[u["index"] for u in batch])
        texts = [model.decode(ids) for ids in generated]
        rankings = p.chosen_rankings()
        target = model.score([u["prompt"] + ids for u, ids in zip(batch, generated, strict=True)])
        lower = model.score(model.tokenize([t.lower() for t in texts])) if "lowercase" in rankings else None
        ref = (context.model_named(p.reference_model).score(context.model_named(p.reference_model).tokenize(texts))
               if "reference" in rankings else None)
        records = []
        for i, (unit, ids, text) in enumerate(zip(batch, generated, texts, strict=True)):
            nll = -target[i].logprob[len(unit["prompt"]) - 1:].astype(np.float64)
            scores = {r: ranking_score(r, nll, text, p.window, lower[i] if lower else None, ref[i] if ref else None)
                      for r in rankings}
            match = self.index.find(text)
            records.append({"id": str(unit["index"]), "text": text, "ids": ids, "scores": scores,
                            "memorized": match is not None, "match": match})
        return records

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        p = self.params
        metrics, tops = [], {}
        for ranking in p.chosen_rankings():
            ranked = sorted(records, key=lambda r: r["scores"][ranking], reverse=True)
            top = distinct(ranked, p.duplicate_overlap, p.top_n)
            metrics.append(rate_metric(f"{ranking}_precision", sum(r["memorized"] for r in top), len(top)))
            tops[ranking] = [{"id": r["id"], "text": r["text"], "memorized": r["memorized"],
                              "score": r["scores"][ranking]} for r in top]
        memorized = distinct([r for r in records if r["memorized"]], p.duplicate_overlap, len(records))
        metrics.append(Metric("memorized_distinct", float(len(memorized)), n=len(records)))
        metrics.append(rate_metric("memorized_fraction", sum(r["memorized"] for r in records), len(records)))
        context.artifact("top_candidates", tops)
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return untargeted_sections(evaluation, records)


def ranking_score(ranking: str, nll: np.ndarray, text: str, window: int, lower: Any, ref: Any) -> float:
    loss = float(nll.mean())
    if ranking == "perplexity":
        return -loss
    if ranking == "zlib":
        return -loss / len(zlib.compress(text.encode("utf-8")))
    if ranking == "lowercase":
        return -(loss + float(lower.logprob.astype(np.float64).mean()))
    if ranking == "window":
        width = min(window, nll.size)
        sums = np.convolve(nll, np.ones(width), mode="valid") / width
        return -float(sums.min())
    if ranking == "reference":
        return -loss / -float(ref.logprob.astype(np.float64).mean())
    raise ValueError(f"unknown ranking {ranking!r}")


def trigrams(ids: list[int]) -> set[tuple[int, int, int]]:
    return {tuple(ids[i:i + 3]) for i in range(len(ids) - 2)}


def distinct(ranked: list[dict[str, Any]], overlap: float, limit: int) -> list[dict[str, Any]]:
    """The first `limit` candidates in order, skipping any that shares more than `overlap` of its
    token trigrams (of the smaller set) with one already kept."""
    kept: list[dict[str, Any]] = []
    kept_grams: list[set[tuple[int, int, int]]] = []
    for record in ranked:
        grams = trigrams(record["ids"])
        if any(grams and other and len(grams & other) / min(len(grams), len(other)) > overlap
               for other in kept_grams):
            continue
        kept.append(record)
        kept_grams.append(grams)
        if len(kept) == limit:
            break
    return kept
