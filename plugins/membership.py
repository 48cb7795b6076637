"""`membership.attack`: membership inference against a language model, with honest statistics."""

from __future__ import annotations

import math
import string
import zlib
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from memeval.api import (
    SCORED_SAMPLES,
    TOP_N,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Registry,
    Sample,
    Section,
    Sensitive,
    Series,
    Table,
    TokenScores,
    UsageError,
    best_balanced_accuracy,
    by_rows,
    cross_validated_scores,
    fit_to_context,
    hookimpl,
    roc_auc,
    roc_curve,
    roc_metric,
    tpr_at_fpr_statistic,
)

Attack = Literal["loss", "zlib", "lowercase", "min_k", "min_k_plus_plus", "reference"]
ATTACKS: tuple[str, ...] = ("loss", "zlib", "lowercase", "min_k", "min_k_plus_plus", "reference")
FPR_LEVELS = {"0.1pct": 0.001, "1pct": 0.01, "5pct": 0.05}
FLAT = 1e-6  # below this std of log p, the next-token distribution is flat: Min-K%++ z-score is 0
ROC_POINTS = 200
BLIND_REPEATS = 5
BLIND_L2 = 1.0


def hashed_ngram_dim(n_samples: int) -> int:
    """Hashed n-gram buckets: about half as many as samples (64 to 1024), so a small split cannot
    be fitted by noise features (measured: 1024 buckets on 60+60 same-distribution texts gave a
    blind AUC CI of [0.50, 0.71]; 64 buckets [0.44, 0.66])."""
    return int(np.clip(2 ** math.floor(math.log2(max(2, n_samples // 2))), 64, 1024))


class MembershipParams(Params):
    non_members: str = Field(description="suite dataset of non-members (the evaluation's dataset holds members)")
    attacks: list[Attack] | None = Field(None, description="default: all, 'reference' when reference_model is set")
    reference_model: str | None = Field(None, description="suite model for the 'reference' attack")
    k: float = Field(0.2, gt=0, le=1, description="Min-K% and Min-K%++: fraction of lowest-scoring tokens")
    max_tokens: int | None = Field(None, ge=2, description="truncate each sequence to this many tokens")
    batch_size: int | None = Field(None, ge=1, description="sequences per forward pass (default: the model's)")
    blind_baseline: bool = Field(True, description="also fit a model-free classifier on the texts")

    @model_validator(mode="after")
    def _reference_needs_a_model(self) -> MembershipParams:
        if self.attacks is not None and "reference" in self.attacks and self.reference_model is None:
            raise ValueError("attack 'reference' needs 'reference_model'")
        return self

    def chosen_attacks(self) -> list[str]:
        if self.attacks is not None:
            return list(dict.fromkeys(self.attacks))
        return [a for a in ATTACKS if a != "reference" or self.reference_model is not None]


def _attack_metrics(attack: str) -> tuple[MetricSpec, ...]:
    specs = [MetricSpec(f"{attack}_auc", f"ROC AUC of the {attack} attack (0.5 = no leakage)", True)]
    specs += [MetricSpec(f"{attack}_tpr_at_{label}_fpr", f"TPR of the {attack} attack at FPR <= {level:g}", True)
              for label, level in FPR_LEVELS.items()]
    specs.append(MetricSpec(f"{attack}_balanced_accuracy", f"best balanced accuracy of the {attack} attack", True))
    return tuple(specs)


class MembershipAttack(Method):
    """Score every member and non-member with each attack; higher score = "more likely a member".

    loss: -(mean token NLL). zlib: -(mean token NLL) / zlib-compressed size of the UTF-8 text in
    bytes (Carlini et al. 2021, as in the MIMIR benchmark; of the scored tokens' text when
    `max_tokens` or the context cuts it). lowercase: -(NLL(x) - NLL(lower(x))),
    the log of the perplexity ratio. reference: NLL_reference(x) - NLL_target(x). min_k: mean of
    the lowest k% token log-probs (Shi et al. 2024). min_k_plus_plus: mean of the lowest k% of
    (log p(x_t) - mu_t) / sigma_t, mu and sigma the mean and std of log p(z) under the model's
    next-token distribution (Zhang et al. 2024); where sigma < 1e-6 the distribution is flat and
    the position scores 0. k% of n tokens is ceil(k n) in exact arithmetic, at least one.

    Metrics per attack: ROC AUC, TPR at FPR <= 0.1%, 1%, 5% (non-strict: the best TPR among ROC
    points whose FPR is at most the target) and the best balanced accuracy, each with a stratified
    bootstrap CI. The blind baseline fits a cross-validated logistic regression on model-free
    features of the text (length, zlib ratio, character classes, hashed character 1-3-grams): when
    it separates members from non-members, so can any attack without memorization.
    """

    name = "membership.attack"
    summary = "membership inference: loss, zlib, lowercase, reference, Min-K%, Min-K%++ with ROC statistics"
    Params = MembershipParams
    requires = frozenset({"logprobs"})
    dataset_params = ("non_members",)
    model_params = ("reference_model",)
    metrics = (
        *(spec for attack in ATTACKS for spec in _attack_metrics(attack)),
        MetricSpec("best_auc", "the highest AUC among the attacks run", True),
        MetricSpec("blind_auc", "AUC of a model-free classifier (cross-validated) on the same split", None),
        MetricSpec("best_auc_over_blind", "best_auc minus blind_auc: leakage beyond what the data gives away", True),
    )

    @classmethod
    def produced_metrics(cls, params: MembershipParams) -> list[str]:
        names = [spec.name for attack in params.chosen_attacks() for spec in _attack_metrics(attack)]
        names.append("best_auc")
        if params.blind_baseline:
            names += ["blind_auc", "best_auc_over_blind"]
        return names

    @classmethod
    def scored_sequences(cls, params: MembershipParams) -> str | None:
        return SCORED_SAMPLES if params.max_tokens is None else None  # each sample whole, unless cut

    def prepare(self, samples: list[Sample], context: Any) -> list[dict[str, Any]]:
        labelled = [(s, True) for s in samples] + [(s, False) for s in context.dataset_named(self.params.non_members)]
        texts = [s.full_text or "" for s, _ in labelled]
        self.attacks = self.params.chosen_attacks()
        if "lowercase" in self.attacks and all(t == t.lower() for t in texts):
            self.attacks = [a for a in self.attacks if a != "lowercase"]
            context.warn("attack 'lowercase' skipped: every text is already lower-case, so it would give every "
                         "sample the same score")
        attacks = self.attacks
        units = [{"sample": s, "member": member, "text": text} for (s, member), text in zip(labelled, texts, strict=True)]
        self._add_ids(units, "ids", context.model, texts, [s.tokens for s, _ in labelled], context)
        if "lowercase" in attacks:
            self._add_ids(units, "lower_ids", context.model, [t.lower() for t in texts], [None] * len(texts), context)
        if "reference" in attacks:
            reference = context.model_named(self.params.reference_model)
            self._add_ids(units, "ref_ids", reference, texts, [None] * len(texts), context)
        kept = [u for u in units if all(len(u[key]) >= 2 for key in ("ids", "lower_ids", "ref_ids") if key in u)]
        if len(kept) < len(units):
            context.warn(f"{len(units) - len(kept)} sample(s) with fewer than 2 tokens were skipped")
        non_members = len(kept) - sum(u["member"] for u in kept)
        thin = [f"{label} needs {math.ceil(1 / level)}" for label, level in FPR_LEVELS.items() if non_members < 1 / level]
        if thin:
            context.warn(f"only {non_members} non-members: a TPR at a false positive rate below 1/{non_members} "
                         f"rests on no false positive at all ({', '.join(thin)})")
        return kept

    def _add_ids(self, units: list[dict[str, Any]], key: str, model: Any, texts: list[str],
                 given: list[list[int] | None], context: Any) -> None:
        to_tokenize = [t for t, g in zip(texts, given, strict=True) if g is None]
        tokenized = iter(model.tokenize(to_tokenize) if to_tokenize else [])
        sequences = [list(ids if ids is not None else next(tokenized)) for ids in given]
        fitted, cuts = fit_to_context(sequences, model, self.params.max_tokens, context)
        for unit, ids, cut in zip(units, fitted, cuts, strict=True):
            unit[key] = ids
            if key == "ids":
                unit["cut_tokens"] = cut

    def size(self, unit: dict[str, Any]) -> int:
        return len(unit["ids"])

    def map(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        attacks = self.attacks
        target = context.model.score([u["ids"] for u in batch])
        lower = context.model.score([u["lower_ids"] for u in batch]) if "lowercase" in attacks else None
        ref = (context.model_named(self.params.reference_model).score([u["ref_ids"] for u in batch])
               if "reference" in attacks else None)
        records = []
        for i, unit in enumerate(batch):
            loss = -float(np.mean(target[i].logprob, dtype=np.float64))
            # zlib compresses the text the loss is over: a cut sequence's own tokens, not the whole text
            scored_text = context.model.decode(unit["ids"]) if unit["cut_tokens"] else unit["text"]
            scores = {attack: attack_score(attack, target[i], scored_text, self.params.k,
                                           lower[i] if lower else None, ref[i] if ref else None)
                      for attack in attacks}
            records.append({"id": unit["sample"].id, "member": unit["member"], "n_tokens": len(unit["ids"]) - 1,
                            "loss": loss, "scores": scores, "cut_tokens": unit["cut_tokens"], "text": unit["text"]})
        return records

    def reduce(self, records: list[dict[str, Any]], context: Any) -> list[Metric]:
        labels = np.array([r["member"] for r in records], dtype=bool)
        if labels.all() or not labels.any():
            raise ValueError("membership.attack needs at least one member and one non-member")
        metrics: list[Metric] = []
        curves = {}
        for attack in self.attacks:
            scores = np.array([r["scores"][attack] for r in records], dtype=np.float64)
            if np.ptp(scores) == 0:
                context.warn(f"attack {attack!r} gave every sample the same score (e.g. lowercase on text that "
                             f"is already lower-case): its AUC of 0.5 carries no information")
            metrics += attack_metrics(attack, labels, scores, context.seed)
            curves[attack] = _thin_curve(*roc_curve(labels, scores)[:2])
        aucs = [m for m in metrics if m.name.endswith("_auc")]
        best = max(aucs, key=lambda m: m.value)
        metrics.append(Metric("best_auc", best.value, best.ci_low, best.ci_high, best.ci_level,
                              f"{best.ci_method} ({best.name})", best.n))
        if self.params.blind_baseline:
            blind = blind_scores([r["text"] for r in records], labels, context.seed)
            blind_metric = roc_metric("blind_auc", labels, blind, roc_auc, seed=context.seed)
            metrics.append(blind_metric)
            metrics.append(_difference_metric(labels, np.array([r["scores"][best.name[:-4]] for r in records]),
                                              blind, context.seed))
            curves["blind"] = _thin_curve(*roc_curve(labels, blind)[:2])
            if blind_metric.ci_low > 0.5:
                context.warn(f"members and non-members are separable without the model: blind AUC "
                             f"{blind_metric.value:.3f} [{blind_metric.ci_low:.3f}, {blind_metric.ci_high:.3f}]. "
                             f"Attack AUCs on this split are not evidence of memorization by themselves; "
                             f"see best_auc_over_blind")
        context.artifact("roc", curves)
        context.artifact("conventions", {"score": "higher = more likely a member (every attack)",
                                         "tpr_at_fpr": "largest TPR among ROC points with FPR <= target (non-strict)",
                                         "ties": "tied scores share a threshold; AUC counts ties one half"})
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        blocks: list = []
        curves = evaluation.artifacts.get("roc", {})
        if curves:
            series = [Series(roc_label(name, evaluation), curve["fpr"], curve["tpr"]) for name, curve in curves.items()]
            blocks.append(LinePlot("ROC of each attack (blind: model-free baseline)", "false positive rate",
                                   "true positive rate", series, (0.0, 1.0), (0.0, 1.0), diagonal=True))
            smallest = min((f for c in curves.values() for f in c["fpr"] if f > 0), default=1.0)
            lowest = min((t for c in curves.values() for t in c["tpr"] if t > 0), default=1.0)
            blocks.append(LinePlot("The same ROC, log FPR (the low-FPR regime attacks are judged in)",
                                   "false positive rate (log)", "true positive rate", series, (smallest, 1.0), (0.0, 1.0),
                                   diagonal=True, log_x=True))
            blocks.append(LinePlot("The same ROC on log-log axes (as the membership-inference literature draws it)",
                                   "false positive rate (log)", "true positive rate (log)", series,
                                   (smallest, 1.0), (min(lowest, smallest), 1.0), diagonal=True, log_x=True,
                                   log_y=True))
        aucs = [m for m in evaluation.metrics if m.name.endswith("_auc") and m.name not in ("best_auc", "blind_auc")]
        if aucs:
            attack = max(aucs, key=lambda m: m.value).name.removesuffix("_auc")
            top = records.top(TOP_N, key=lambda r: r["scores"][attack])
            blocks.append(Table(["id", "member", f"{attack} score", "tokens", "text"],
                                [[r["id"], r["member"], r["scores"][attack], r["n_tokens"], Sensitive(r["text"])]
                                 for r in top],
                                title=f"Samples the best attack ({attack}) is surest are members"))
        return [Section("Membership inference", blocks,
                        "Every attack's score is higher for samples it believes are members.")]


def roc_label(attack: str, evaluation: EvaluationResult) -> str:
    """`loss (AUC 0.93)`: the legend says how good each curve is."""
    auc = evaluation.metric(f"{attack}_auc")
    return f"{attack} (AUC {auc.value:.3f})" if auc is not None and auc.value is not None else attack


def attack_score(attack: str, target: TokenScores, text: str, k: float, lower: TokenScores | None,
                 ref: TokenScores | None) -> float:
    """The attack's membership score of one sample (higher = more likely a member)."""
    logprob = target.logprob.astype(np.float64)
    loss = -logprob.mean()
    if attack == "loss":
        return float(-loss)
    if attack == "zlib":
        return float(-loss / len(zlib.compress(text.encode("utf-8"))))
    if attack == "lowercase":
        return float(-(loss + lower.logprob.astype(np.float64).mean()))
    if attack == "reference":
        return float(-ref.logprob.astype(np.float64).mean() - loss)
    if attack == "min_k":
        return lowest_k_mean(logprob, k)
    if attack == "min_k_plus_plus":
        if np.isnan(target.mean_logprob).any():  # a served model (openai-compat) gives only the top log-probs
            raise UsageError("attack 'min_k_plus_plus' needs the mean and std of log p over the whole vocabulary "
                             "at every position, which this model does not give (a completions server returns "
                             "only the top log-probs): leave min_k_plus_plus out of `attacks`")
        return lowest_k_mean(standardized_logprob(target), k)
    raise ValueError(f"unknown attack {attack!r}")


def standardized_logprob(scores: TokenScores) -> np.ndarray:
    mu = scores.mean_logprob.astype(np.float64)
    sigma = scores.std_logprob.astype(np.float64)
    centred = scores.logprob.astype(np.float64) - mu
    return np.where(sigma < FLAT, 0.0, centred / np.maximum(sigma, FLAT))


def lowest_k_mean(values: np.ndarray, k: float) -> float:
    count = max(1, lowest_k_count(k, values.size))
    return float(np.sort(values)[:count].mean())


def lowest_k_count(k: float, n: int) -> int:
    """ceil(k n) for k as written in decimal (0.55 of 100 is 55): in binary floating point 0.55 * 100
    is 55.000000000000007, whose ceiling takes one token too many."""
    numerator, denominator = Fraction(repr(k)).as_integer_ratio()
    return -(-numerator * n // denominator)


def attack_metrics(attack: str, labels: np.ndarray, scores: np.ndarray, seed: int) -> list[Metric]:
    metrics = [roc_metric(f"{attack}_auc", labels, scores, roc_auc, seed=seed)]
    for label, level in FPR_LEVELS.items():
        metrics.append(roc_metric(f"{attack}_tpr_at_{label}_fpr", labels, scores, tpr_at_fpr_statistic(level),
                                  seed=seed))
    metrics.append(roc_metric(f"{attack}_balanced_accuracy", labels, scores, best_balanced_accuracy, seed=seed))
    return metrics


def _difference_metric(labels: np.ndarray, attack: np.ndarray, blind: np.ndarray, seed: int) -> Metric:
    """AUC(attack) - AUC(blind), with a paired stratified bootstrap CI (both scored on each resample)."""

    @by_rows(lambda y, pairs: roc_auc.rows(y, pairs[..., 0]) - roc_auc.rows(y, pairs[..., 1]))
    def difference(y: np.ndarray, pair: np.ndarray) -> float:
        return roc_auc(y, pair[:, 0]) - roc_auc(y, pair[:, 1])

    return roc_metric("best_auc_over_blind", labels, np.stack([attack, blind], axis=1), difference, seed=seed)


def blind_features(texts: list[str], buckets: int) -> np.ndarray:
    """Model-free features: length, compressibility, character classes, hashed character n-grams."""
    rows = []
    for text in texts:
        data = text.encode("utf-8")
        n = max(1, len(text))
        dense = [math.log1p(len(text)), math.log1p(len(text.split())), len(zlib.compress(data)) / max(1, len(data)),
                 sum(c.isupper() for c in text) / n, sum(c.isdigit() for c in text) / n,
                 sum(c.isspace() for c in text) / n, sum(c in string.punctuation for c in text) / n]
        grams = np.zeros(buckets)
        for size in (1, 2, 3):
            for start in range(len(text) - size + 1):
                grams[zlib.crc32(text[start:start + size].encode()) % buckets] += 1
        rows.append(np.r_[dense, grams / max(1.0, grams.sum())])
    return np.array(rows)


def blind_scores(texts: list[str], labels: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold scores of a logistic regression on `blind_features`: stratified k-fold (k up to
    5), repeated with BLIND_REPEATS fold assignments and averaged, so one lucky split of a small
    dataset does not decide the verdict."""
    folds = int(min(5, labels.sum(), (~labels).sum()))
    if folds < 2:
        return np.zeros(labels.size)
    features = blind_features(texts, hashed_ngram_dim(len(texts)))
    return np.mean([cross_validated_scores(features, labels, n_folds=folds, seed=seed + repeat, l2=BLIND_L2)
                    for repeat in range(BLIND_REPEATS)], axis=0)


def _thin_curve(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, list[float]]:
    """At most ROC_POINTS points of the curve (always its ends), for reports."""
    if fpr.size > ROC_POINTS:
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, ROC_POINTS).astype(int), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]}


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(MembershipAttack)
