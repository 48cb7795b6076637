"""`arithmetic.extrapolation`: does a model compute or recall? Greedy answers on held-out operand
pairs (Maltoni & Ferrara 2024)."""

from __future__ import annotations

import string
from collections import defaultdict
from typing import Any, Literal

from pydantic import Field, field_validator

from memeval.api import (
    Context,
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    UsageError,
    mean_metric,
    rate_metric,
)
from memeval_plugins.arithmetic.data import SYMBOLS
from memeval_plugins.arithmetic.sections import extrapolation_sections

TEMPLATE_FIELDS = frozenset({"prompt", "a", "b", "a_bits", "b_bits", "op"})
NEEDED_COLUMNS = ("a", "b", "held_out", "value", "carry_chain")


class ExtrapolationParams(Params):
    template: str = Field(
        "{prompt}",
        description=(
            "causal LMs: the prompt text, with {prompt} (the dataset's, e.g. 1010101+0101010=), {a}, {b} "
            "(decimal), {a_bits}, {b_bits} (as in the prompt) and {op}; a seq2seq model always reads {prompt}"
        ),
    )
    answer: Literal["bits", "decimal"] = Field(
        "bits",
        description=(
            "the answer expected: the result bits as the dataset writes them, or the decimal value"
        ),
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "causal LMs: tokens generated per prompt (default: the longest answer's characters + 2)"
        ),
    )
    batch_size: int = Field(512, ge=1, description="prompts decoded per batch")

    @field_validator("template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        try:
            used = {
                name for _, name, _, _ in string.Formatter().parse(template) if name is not None
            }
        except ValueError as exc:
            raise ValueError(f"not a format template ({exc})") from None
        unknown = used - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown template field(s) {sorted(unknown)}; known: {sorted(TEMPLATE_FIELDS)}"
            )
        return template


def unit_of(sample: Any, params: ExtrapolationParams) -> dict[str, Any]:
    meta = sample.meta
    missing = [c for c in NEEDED_COLUMNS if c not in meta]
    prompt = sample.prefix if sample.prefix is not None else meta.get("prompt")
    bits_target = sample.suffix if sample.suffix is not None else meta.get("target")
    if missing or prompt is None or bits_target is None:
        raise UsageError(
            "the dataset must come from the arithmetic loader (prompt, target, "
            f"{', '.join(NEEDED_COLUMNS)}); missing: {', '.join(missing) or 'prompt/target'}"
        )
    operation = str(meta.get("operation", "add"))
    width = int(meta.get("bits", (len(prompt) - 2) // 2))  # prompt = a bits, operator, b bits, "="
    a_bits, b_bits = prompt[:width], prompt[width + 1 : 2 * width + 1]
    text = params.template.format(
        prompt=prompt,
        a=meta["a"],
        b=meta["b"],
        a_bits=a_bits,
        b_bits=b_bits,
        op=SYMBOLS.get(operation, "+"),
    )
    target = bits_target if params.answer == "bits" else str(meta["value"])
    return {
        "id": sample.id,
        "prompt": prompt,
        "text": text,
        "target": target,
        "a": int(meta["a"]),
        "b": int(meta["b"]),
        "held_out": bool(meta["held_out"]),
        "carry_chain": int(meta["carry_chain"]),
    }


def read_answer(text: str, answer: str, width: int) -> str:
    """The answer a decoded continuation gives: its leading run of digits (0/1 for bits), after
    any leading whitespace; a bit answer is fixed-width, so what follows its width is ignored."""
    alphabet = "01" if answer == "bits" else string.digits
    text = text.lstrip()
    end = next((i for i, c in enumerate(text) if c not in alphabet), len(text))
    return text[: min(end, width)] if answer == "bits" else text[:end]


def score(prediction: str, target: str) -> tuple[bool, float]:
    """(every character right, share of the target's characters right position by position)."""
    right = sum(p == t for p, t in zip(prediction, target, strict=False))
    return prediction == target, right / len(target)


class Extrapolation(Method):
    """Sequence and token accuracy of greedy answers, on the training pairs and the held-out ones.

    The dataset is an `arithmetic` loader dataset (`split: all` gives both parts; `test` the
    held-out pairs only). A `seq2seq` model decodes the target's length greedily from the prompt; a
    causal LM (`recipe`, `hf-causal`, ...) is given the prompt rendered through `template` and
    generates greedily, and its answer is the leading run of digits. High held-out accuracy on a
    `value` or `token` split means the model computes (it never saw those operands together or
    those input tokens); a control task `R` (random outputs) can only be memorized and stays near
    `chance_sequence_accuracy` on held-out pairs. With a `seq2seq` model the per-epoch training
    log (training fit and monitored datasets' accuracy, teacher-forced) becomes the `curves` artifact;
    accuracy by operand magnitude (bit length of the larger operand) and by carry-chain length
    (longest run of carries in a + b) are the `by_magnitude` and `by_carry_chain` artifacts.
    """

    name = "arithmetic.extrapolation"
    summary = "compute or recall: greedy accuracy of binary arithmetic on held-out operand pairs and tokens"
    Params = ExtrapolationParams
    requires = frozenset()
    metrics = (
        MetricSpec(
            "heldout_sequence_accuracy",
            "share of held-out pairs answered with every character right",
            None,
            per_sample="sequence_correct",
        ),
        MetricSpec(
            "heldout_token_accuracy",
            "mean share of answer characters right on held-out pairs",
            None,
            per_sample="token_accuracy",
        ),
        MetricSpec(
            "train_sequence_accuracy", "share of training pairs answered exactly (the fit)", None
        ),
        MetricSpec(
            "train_token_accuracy", "mean share of answer characters right on training pairs", None
        ),
        MetricSpec(
            "chance_sequence_accuracy",
            "exact-answer rate of uniform random bits (bits answers)",
            None,
        ),
        MetricSpec(
            "fit_epoch",
            "seq2seq models: the epoch training fit its training set (absent: never)",
            None,
        ),
        MetricSpec("epochs_trained", "seq2seq models: epochs trained", None),
    )
    records = {
        "a": "first operand",
        "b": "second operand",
        "held_out": "pair held out of training",
        "target": "the true answer",
        "prediction": "the model's greedy answer",
        "sequence_correct": "every answer character right",
        "token_accuracy": "share of characters right",
        "magnitude": "bit length of the larger operand",
        "carry_chain": "longest run of carries in a + b",
    }

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        return [unit_of(s, context.params) for s in samples]

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        params: ExtrapolationParams = context.params
        answers = decode(context.model, batch, params)
        out = []
        for unit, text in zip(batch, answers, strict=True):
            prediction = read_answer(text, params.answer, len(unit["target"]))
            correct, token_accuracy = score(prediction, unit["target"])
            out.append(
                {
                    "id": unit["id"],
                    "a": unit["a"],
                    "b": unit["b"],
                    "held_out": unit["held_out"],
                    "target": unit["target"],
                    "prediction": prediction,
                    "sequence_correct": correct,
                    "token_accuracy": token_accuracy,
                    "magnitude": max(unit["a"], unit["b"]).bit_length(),
                    "carry_chain": unit["carry_chain"],
                }
            )
        return out

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        metrics: list[Metric] = []
        for part, held in (("heldout", True), ("train", False)):
            chosen = [r for r in records if r["held_out"] is held]
            if chosen:
                metrics.append(
                    rate_metric(
                        f"{part}_sequence_accuracy",
                        sum(r["sequence_correct"] for r in chosen),
                        len(chosen),
                    )
                )
                metrics.append(
                    mean_metric(
                        f"{part}_token_accuracy",
                        [r["token_accuracy"] for r in chosen],
                        seed=context.seed,
                    )
                )
        if context.params.answer == "bits" and records:
            metrics.append(Metric("chance_sequence_accuracy", 2.0 ** -len(records[0]["target"])))
        model = context.model
        log = getattr(model, "training_log", None)
        if isinstance(log, list) and log and isinstance(log[0], dict):
            metrics.append(Metric("epochs_trained", float(len(log))))
            fit = getattr(model, "fit_epoch", None)
            if fit is not None:
                metrics.append(Metric("fit_epoch", float(fit)))
            else:
                context.warn(
                    f"the model never fit its training set ({len(log)} epochs, the max_epochs cap)"
                )
            context.artifact("curves", curves_of(log))
        for key, name in (("magnitude", "by_magnitude"), ("carry_chain", "by_carry_chain")):
            context.artifact(name, accuracy_by(records, key))
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return extrapolation_sections(evaluation)


def decode(model: Any, batch: list[dict[str, Any]], params: ExtrapolationParams) -> list[str]:
    """Greedy continuations: a seq2seq model decodes the target's length from the dataset's prompt;
    a causal LM continues the templated prompt (through its adapter, so outputs are cached)."""
    capabilities = getattr(model, "capabilities", frozenset())
    if "transduce" in capabilities:
        length = max(len(u["target"]) for u in batch)
        return list(model.greedy_text([u["prompt"] for u in batch], length))
    if "generate" not in capabilities:
        raise UsageError(
            f"arithmetic.extrapolation needs a seq2seq model or a causal LM; this model offers "
            f"{', '.join(sorted(capabilities)) or 'nothing'}"
        )
    new_tokens = params.max_new_tokens or max(len(u["target"]) for u in batch) + 2
    prompts = model.tokenize([u["text"] for u in batch])
    return [model.decode(ids) for ids in model.generate(prompts, new_tokens)]


def curves_of(log: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per epoch: training fit and each monitored dataset's accuracy (teacher-forced: the sequence
    accuracy is greedy decoding's; the token accuracy is per position given the true prefix)."""
    curves: dict[str, list[float]] = {
        "epochs": [e["epoch"] for e in log],
        "train sequence accuracy": [e["train_sequence_accuracy"] for e in log],
        "train token accuracy": [e["train_token_accuracy"] for e in log],
        "loss": [e["loss"] for e in log],
    }
    for name in log[0].get("monitored", {}):
        for kind in ("sequence", "token"):
            curves[f"{name} {kind} accuracy"] = [
                e["monitored"][name][f"{kind}_accuracy"] for e in log
            ]
    return curves


def accuracy_by(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Sequence accuracy per value of `key`, held-out and training pairs apart."""
    groups: dict[tuple[int, bool], list[bool]] = defaultdict(list)
    for r in records:
        groups[(r[key], r["held_out"])].append(r["sequence_correct"])
    return [
        {
            key: value,
            "held_out": held,
            "pairs": len(hits),
            "sequence_accuracy": sum(hits) / len(hits),
        }
        for (value, held), hits in sorted(groups.items())
    ]
