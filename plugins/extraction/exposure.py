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
    UsageError,
    mean_metric,
)
from memeval_plugins.extraction.sections import exposure_sections


class ExposureParams(Params):
    secret_field: str = Field("secret", description="dataset column holding each canary's secret (it appears "
                                                    "once in the canary's text)")
    alphabet: str = Field("0123456789", min_length=2, description="characters a secret is drawn from (without "
                                                                 "`format`: every position; with it: `?`)")
    format: str | None = Field(None, min_length=1, description=(
        "the secret's shape, one character per position: D a digit, L a lower-case letter, U an upper-case "
        "letter, H a hex digit, ? a character of `alphabet`, \\ before a character keeps it literal, anything "
        "else is literal (e.g. DDD-DD-DDDD for an SSN: 10^9 candidates, not every 11-character string)"))
    method: Literal["auto", "exact", "skew_normal"] = Field(
        "auto", description="exact: rank among every candidate; skew_normal: extrapolate from a sample; auto: "
                            "exact when the space has at most max_enumerate candidates")
    max_enumerate: int = Field(20000, ge=1, description="method auto ranks exactly among every candidate up to "
                                                         "this many, else fits a skew-normal")
    samples: int = Field(2000, ge=50, description="candidates drawn for the skew-normal fit")
    batch_size: int | None = Field(None, ge=1, description="canaries per map call (default: the model's)")


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
                raise UsageError(f"sample {sample.id!r}: column {self.params.secret_field!r} must hold a string "
                                 f"found exactly once in the text")
            space = SecretSpace.of(self.params, secret)
            problem = space.misfit(secret)
            if problem:
                fix = "fix the secret or the format" if self.params.format else "fix the secret or set alphabet/format"
                raise UsageError(f"sample {sample.id!r}: secret {secret!r} is outside its candidate space: {problem}; "
                                 f"{fix}")
            before, after = text.split(secret)
            units.append({"sample": sample, "before": before, "after": after, "secret": secret, "space": space})
        return units

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        return [self.expose(unit, context) for unit in batch]

    def expose(self, unit: dict[str, Any], context: Any) -> dict[str, Any]:
        p, model, secret_space = self.params, context.model, unit["space"]
        length, space = len(unit["secret"]), secret_space.size
        exact = p.method == "exact" or (p.method == "auto" and space <= p.max_enumerate)
        if exact:
            candidates: Iterable[str] = (secret_space.nth(i) for i in range(space))
        else:
            rng = np.random.default_rng([context.seed, zlib.crc32(unit["sample"].id.encode())])
            candidates = (secret_space.draw(rng) for _ in range(p.samples))
        texts = [unit["before"] + c + unit["after"] for c in [unit["secret"], *candidates]]
        log_ppl = -np.array(model.sequence_logprob(model.tokenize(texts)), dtype=np.float64)
        canary, others = log_ppl[0], log_ppl[1:]
        record = {"id": unit["sample"].id, "secret_length": length, "space": space, "format": p.format,
                  "log_perplexity": canary,
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


FORMAT_CLASSES = {"D": "0123456789", "L": "abcdefghijklmnopqrstuvwxyz", "U": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                  "H": "0123456789abcdef"}


class SecretSpace:
    """The candidate secrets: one character class per position (a literal is a class of one)."""

    def __init__(self, positions: list[str]):
        self.positions = positions
        self.size = math.prod(len(p) for p in positions)
        self.one_alphabet = len(set(positions)) == 1

    @classmethod
    def of(cls, params: ExposureParams, secret: str) -> SecretSpace:
        if params.format is None:
            return cls([params.alphabet] * len(secret))
        return cls(parse_format(params.format, params.alphabet))

    def misfit(self, secret: str) -> str:
        """Why `secret` is not one of the candidates ('' when it is)."""
        if len(secret) != len(self.positions):
            return f"{len(secret)} characters, the space has {len(self.positions)}"
        for i, (char, allowed) in enumerate(zip(secret, self.positions, strict=True)):
            if char not in allowed:
                shown = allowed if len(allowed) <= 16 else f"{allowed[:10]}...{allowed[-3:]}"
                return f"character {i + 1} is {char!r}, expected one of {shown!r}"
        return ""

    def nth(self, index: int) -> str:
        """The index-th candidate, the last position varying fastest."""
        chars = []
        for allowed in reversed(self.positions):
            index, digit = divmod(index, len(allowed))
            chars.append(allowed[digit])
        return "".join(reversed(chars))

    def draw(self, rng: np.random.Generator) -> str:
        """A candidate drawn uniformly (each position independently)."""
        if self.one_alphabet:  # the draw runs without a format always made, kept
            return "".join(rng.choice(list(self.positions[0]), size=len(self.positions)))
        picks = rng.integers(0, [len(allowed) for allowed in self.positions])
        return "".join(allowed[i] for allowed, i in zip(self.positions, picks, strict=True))


def parse_format(template: str, alphabet: str) -> list[str]:
    positions, escaped = [], False
    for char in template:
        if escaped:
            positions.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "?":
            positions.append(alphabet)
        else:
            positions.append(FORMAT_CLASSES.get(char, char))
    if escaped:
        raise ValueError("format ends with a lone backslash")
    return positions


def skew_normal_exposure(canary: float, sample: np.ndarray, space: int) -> dict[str, Any]:
    """-log2 of the fitted skew-normal CDF at the canary's log-perplexity, capped at log2 |R|."""
    from scipy import stats

    shape, loc, scale = stats.skewnorm.fit(sample)
    log_cdf = float(stats.skewnorm.logcdf(canary, shape, loc, scale))
    exposure = min(math.log2(space), -log_cdf / math.log(2))
    return {"exposure": exposure, "skew_normal": {"shape": float(shape), "loc": float(loc), "scale": float(scale)}}
