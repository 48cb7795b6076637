"""`lm.*`: language-model scores that other methods and gates build on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from memeval.api import (
    SCORED_SAMPLES,
    TOP_N,
    EvaluationResult,
    Method,
    MetricSpec,
    Params,
    Records,
    Registry,
    Sample,
    Section,
    Sensitive,
    Table,
    fit_to_context,
    histogram_of,
    hookimpl,
    mean_metric,
)


class LossParams(Params):
    batch_size: int | None = Field(None, ge=1, description="sequences per forward pass (default: the model's)")
    max_tokens: int | None = Field(None, ge=2, description="truncate each sequence to this many tokens")


class LMLoss(Method):
    """Per-sample mean token negative log-likelihood (nats) and perplexity = exp(loss).

    The loss of a sequence x_0..x_n is -1/n * sum_{t=1..n} log p(x_t | x_<t): every token after the
    first is predicted from the ones before it, the first (BOS, when the tokenizer adds one) is not.
    This is what `transformers` returns as `.loss` with `labels=input_ids`. Token-id datasets are
    scored as given; text is tokenized by the model's tokenizer. Lower loss on members than on
    comparable non-members is a sign of memorization.
    """

    name = "lm.loss"
    summary = "mean token NLL and perplexity of each sample"
    Params = LossParams
    requires = frozenset({"logprobs"})
    prepares_in_blocks = True  # each sample is tokenized and cut on its own
    metrics = (
        MetricSpec("loss_mean", "mean over samples of the per-sample mean token NLL (nats)", False, "loss"),
        MetricSpec("loss_median", "median over samples of the per-sample mean token NLL (nats)", False, "loss", "median"),
        MetricSpec("perplexity_mean", "mean over samples of exp(per-sample loss)", False, "perplexity"),
        MetricSpec("perplexity_median", "median over samples of exp(per-sample loss)", False, "perplexity", "median"),
    )

    @classmethod
    def scored_sequences(cls, params: LossParams) -> str | None:
        return SCORED_SAMPLES if params.max_tokens is None else None  # each sample whole, unless cut

    def prepare(self, samples: list[Sample], context: Any) -> list[tuple[Sample, list[int], int]]:
        texts = [s for s in samples if s.tokens is None]
        ids = iter(context.model.tokenize([s.full_text or "" for s in texts])) if texts else iter(())
        sequences = [sample.tokens if sample.tokens is not None else next(ids) for sample in samples]
        sequences, cuts = fit_to_context(sequences, context.model, self.params.max_tokens, context)
        units = []
        for sample, tokens, cut in zip(samples, sequences, cuts, strict=True):
            if len(tokens) < 2:
                context.warn(f"sample {sample.id!r} has {len(tokens)} token(s); a loss needs 2 or more: skipped")
                continue
            units.append((sample, tokens, cut))
        return units

    def size(self, unit: tuple[Sample, list[int], int]) -> int:
        return len(unit[1])

    def map(self, batch: list[tuple[Sample, list[int], int]], context: Any) -> list[dict[str, Any]]:
        scores = context.model.score([ids for _, ids, _ in batch])
        records = []
        for (sample, ids, cut), score in zip(batch, scores, strict=True):
            loss = -float(np.mean(score.logprob, dtype=np.float64))
            records.append({"id": sample.id, "n_tokens": len(ids) - 1, "loss": loss,
                            "perplexity": math.exp(loss), "cut_tokens": cut, "text": sample.full_text})
        return records

    def reduce(self, records: Sequence[dict[str, Any]], context: Any) -> list:
        losses = [r["loss"] for r in records]
        perplexities = [r["perplexity"] for r in records]
        return [mean_metric("loss_mean", losses, seed=context.seed),
                mean_metric("loss_median", losses, seed=context.seed, statistic=np.median, label="median"),
                mean_metric("perplexity_mean", perplexities, seed=context.seed),
                mean_metric("perplexity_median", perplexities, seed=context.seed, statistic=np.median,
                            label="median")]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        blocks: list = [histogram_of([r["loss"] for r in records], "Per-sample loss", "mean token NLL (nats)")]
        lowest = records.top(TOP_N, key=lambda r: -r["loss"])
        blocks.append(Table(["id", "loss", "perplexity", "tokens", "text"],
                            [[r["id"], r["loss"], r["perplexity"], r["n_tokens"], Sensitive(r.get("text") or "")]
                             for r in lowest], title="Lowest-loss samples (the best predicted)"))
        return [Section("Loss", [b for b in blocks if b is not None])]


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(LMLoss)
