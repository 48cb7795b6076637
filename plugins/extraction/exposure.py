"""`extraction.exposure`: canary exposure (Carlini et al. 2019, "The Secret Sharer")."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from memeval.api import (
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Sample,
    Section,
    mean_metric,
)
from memeval_plugins.extraction.sections import exposure_sections


class ExposureParams(Params):
    secret_field: str = Field("secret", description="dataset column holding each canary's secret (it appears "
                                                    "once in the canary's text)")
    alphabet: str = Field("0123456789", min_length=2, description="characters a secret is drawn from")
    method: Literal["auto", "exact", "skew_normal"] = Field(
        "auto", description="exact: rank among every candidate; skew_normal: extrapolate from a sample; auto: "
                            "exact when the space has at most max_enumerate candidates")
    max_enumerate: int = Field(20000, ge=1)
    samples: int = Field(2000, ge=50, description="candidates drawn for the skew-normal fit")
    batch_size: int | None = Field(None, ge=1)


class Exposure(Method):
    """Canary exposure (Carlini et al. 2019): exposure = log2 |R| - log2 rank.

    R is every string of the canary's length over `alphabet`; a candidate replaces the secret in
    the canary's text, and candidates are ranked by log-perplexity (-total log-prob of the whole
    text, lowest first). rank = 1 + the number of other candidates whose log-perplexity is lower
    than OR EQUAL to the canary's: ties count against the canary. Exact when R is enumerated.
    Otherwise the log-perplexities of `samples` candidates drawn uniformly from R are fitted with a
    skew-normal distribution and exposure = -log2 F(canary's log-perplexity), capped at log2 |R|
    (the exposure of rank 1), as in the paper's extrapolation.
    """

    name = "extraction.exposure"
    summary = "canary exposure: log2 |R| - log2 rank among all candidate secrets"
    Params = ExposureParams
    requires = frozenset({"logprobs"})
    metrics = (
        MetricSpec("exposure_max", "highest exposure of any canary (bits)", True),
        MetricSpec("exposure_mean", "mean exposure over canaries (bits)", True, "exposure"),
        MetricSpec("exposure_median", "median exposure over canaries (bits)", True, "exposure", "median"),
    )

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        units = []
        for sample in samples:
            text, secret = sample.full_text or "", sample.meta.get(self.params.secret_field)
            if not isinstance(secret, str) or text.count(secret) != 1:
                raise ValueError(f"sample {sample.id!r}: column {self.params.secret_field!r} must hold a string "
                                 f"found exactly once in the text")
            if set(secret) - set(self.params.alphabet):
                raise ValueError(f"sample {sample.id!r}: secret {secret!r} has characters outside the alphabet")
            before, after = text.split(secret)
            units.append({"sample": sample, "before": before, "after": after, "secret": secret})
        return units

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        return [self.expose(unit, context) for unit in batch]

    def expose(self, unit: dict[str, Any], context: Any) -> dict[str, Any]:
        p, model = self.params, context.model
        alphabet, length = p.alphabet, len(unit["secret"])
        space = len(alphabet) ** length
        exact = p.method == "exact" or (p.method == "auto" and space <= p.max_enumerate)
        if exact:
            candidates: Iterable[str] = (_nth_string(i, alphabet, length) for i in range(space))
        else:
            rng = np.random.default_rng([context.seed, zlib.crc32(unit["sample"].id.encode())])
            candidates = ("".join(rng.choice(list(alphabet), size=length)) for _ in range(p.samples))
        texts = [unit["before"] + c + unit["after"] for c in [unit["secret"], *candidates]]
        log_ppl = -np.array(model.sequence_logprob(model.tokenize(texts)), dtype=np.float64)
        canary, others = log_ppl[0], log_ppl[1:]
        record = {"id": unit["sample"].id, "secret_length": length, "space": space, "log_perplexity": canary,
                  "method": "exact" if exact else "skew_normal",
                  **{k: v for k, v in unit["sample"].meta.items() if k != self.params.secret_field}}
        if exact:
            # `others` includes the canary's own secret once; it is not counted against itself.
            rank = 1 + int(np.sum(others <= canary)) - 1
            record.update(rank=rank, exposure=math.log2(space) - math.log2(rank))
        else:
            record.update(skew_normal_exposure(canary, others, space), empirical_rank_fraction=float(
                np.mean(others <= canary)))
        return record

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        values = [r["exposure"] for r in records]
        return [Metric("exposure_max", float(max(values)), n=len(values)),
                mean_metric("exposure_mean", values, seed=context.seed),
                mean_metric("exposure_median", values, seed=context.seed, statistic=np.median, label="median")]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return exposure_sections(evaluation, records)


def _nth_string(index: int, alphabet: str, length: int) -> str:
    chars = []
    for _ in range(length):
        index, digit = divmod(index, len(alphabet))
        chars.append(alphabet[digit])
    return "".join(reversed(chars))


def skew_normal_exposure(canary: float, sample: np.ndarray, space: int) -> dict[str, Any]:
    """-log2 of the fitted skew-normal CDF at the canary's log-perplexity, capped at log2 |R|."""
    from scipy import stats

    shape, loc, scale = stats.skewnorm.fit(sample)
    log_cdf = float(stats.skewnorm.logcdf(canary, shape, loc, scale))
    exposure = min(math.log2(space), -log_cdf / math.log(2))
    return {"exposure": exposure, "skew_normal": {"shape": float(shape), "loc": float(loc), "scale": float(scale)}}
