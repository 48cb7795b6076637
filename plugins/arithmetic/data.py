"""The `arithmetic` dataset loader: binary addition, multiplication and the random control `R`
over all operand pairs, with held-out `random`, `value` and `token` splits.

A suite names the task in `path` (`add`, `mul` or `R`), its options in `config` as comma-separated
`key=value` pairs (`bits`, `holdout`, `order`, `centre`, `seed`), and which rows in `split`
(`train`, `test`: the held-out pairs, or `all`, with a `held_out` column):

    datasets:
      add-train: {loader: arithmetic, path: add, config: "bits=7, holdout=value", split: train,
                  prefix_field: prompt, suffix_field: target}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from memeval.api import Strict, UsageError

Operation = Literal["add", "mul", "R"]
SYMBOLS = {"add": "+", "mul": "*", "R": "+"}  # R's inputs are addition's: only the rule differs
SEPARATOR = "="


class TaskConfig(Strict):
    """What `config:` may say."""

    bits: int = Field(7, ge=2, le=10, description="operand width n: operands are 0 .. 2^n - 1")
    holdout: Literal["random", "value", "token", "none"] = Field(
        "random",
        description=(
            "which quarter of the pairs is held out: random (by seed), value (the central square "
            "2^n/4 <= a, b < 3*2^n/4), token (nearest in Hamming distance to `centre`), none"
        ),
    )
    order: Literal["lsb", "msb"] = Field(
        "lsb",
        description="bit order of operands and result: least significant first (lsb) or last (msb)",
    )
    centre: str | None = Field(
        None,
        description="token split: the centre input, e.g. 1010101+0101010 "
        "(default: alternating bits)",
    )
    seed: int = Field(0, ge=0, description="random split and the R task's outputs")

    @model_validator(mode="after")
    def _centre_shape(self) -> TaskConfig:
        if self.centre is not None:
            a, _, b = self.centre.replace("*", "+").partition("+")
            if len(a) != self.bits or len(b) != self.bits or set(a + b) - {"0", "1"}:
                raise ValueError(
                    f"centre must be {self.bits} bits, an operator, {self.bits} bits "
                    f"(e.g. {default_centre(self.bits)}), got {self.centre!r}"
                )
        return self


def default_centre(bits: int) -> str:
    return (
        "".join("10"[i % 2] for i in range(bits)) + "+" + "".join("01"[i % 2] for i in range(bits))
    )


def result_bits(operation: str, bits: int) -> int:
    """Output width: n + 1 for addition (and R), 2n for multiplication."""
    return 2 * bits if operation == "mul" else bits + 1


def to_bits(values: np.ndarray | int, width: int, order: str = "lsb") -> list[str]:
    values = np.atleast_1d(np.asarray(values, dtype=np.int64))
    powers = np.arange(width) if order == "lsb" else np.arange(width)[::-1]
    digits = (values[:, None] >> powers[None, :]) & 1
    return ["".join("01"[d] for d in row) for row in digits]


def from_bits(text: str, order: str = "lsb") -> int:
    """The integer a bit string writes (a ValueError for anything but 0s and 1s)."""
    if not text or set(text) - {"0", "1"}:
        raise ValueError(f"not a bit string: {text!r}")
    return int(text[::-1] if order == "lsb" else text, 2)


def carry_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Longest run of consecutive carries when adding a and b in binary: bit i of (a + b) ^ a ^ b
    is the carry into position i."""
    carries = (np.asarray(a, dtype=np.int64) + b) ^ a ^ b
    longest = np.zeros_like(carries)
    run = np.zeros_like(carries)
    for _ in range(int(carries.max()).bit_length() if carries.size else 0):
        carries = carries >> 1  # bit 0 of a sum never carries in
        run = np.where(carries & 1, run + 1, 0)
        longest = np.maximum(longest, run)
    return longest


@dataclass
class Task:
    """Every pair of one task, in order a * 2^n + b, and which are held out."""

    operation: str
    config: TaskConfig
    a: np.ndarray
    b: np.ndarray
    value: np.ndarray
    held_out: np.ndarray

    @property
    def prompts(self) -> list[str]:
        n, order, symbol = self.config.bits, self.config.order, SYMBOLS[self.operation]
        return [
            f"{x}{symbol}{y}{SEPARATOR}"
            for x, y in zip(to_bits(self.a, n, order), to_bits(self.b, n, order), strict=True)
        ]

    @property
    def targets(self) -> list[str]:
        return to_bits(self.value, result_bits(self.operation, self.config.bits), self.config.order)

    def rows(self, split: str) -> list[dict[str, Any]]:
        keep = {"train": ~self.held_out, "test": self.held_out, "all": np.ones_like(self.held_out)}[
            split
        ]
        chains = carry_chain(self.a, self.b)
        prompts, targets = self.prompts, self.targets
        return [
            {
                "id": f"{self.a[i]}{SYMBOLS[self.operation]}{self.b[i]}",
                "prompt": prompts[i],
                "target": targets[i],
                "text": prompts[i] + targets[i],
                "operation": self.operation,
                "a": int(self.a[i]),
                "b": int(self.b[i]),
                "value": int(self.value[i]),
                "held_out": bool(self.held_out[i]),
                "carry_chain": int(chains[i]),
                "bits": self.config.bits,
                "order": self.config.order,
            }
            for i in np.flatnonzero(keep)
        ]


def make_task(operation: str, config: TaskConfig) -> Task:
    size = 2**config.bits
    a, b = np.divmod(np.arange(size * size, dtype=np.int64), size)
    if operation == "add":
        value = a + b
    elif operation == "mul":
        value = a * b
    else:  # R: a fixed random output per input; no rule, only memorization
        value = np.random.default_rng([config.seed, 0x5EED]).integers(
            0, 2 ** result_bits("R", config.bits), a.size
        )
    return Task(operation, config, a, b, value, held_out_mask(config, a, b))


def held_out_mask(config: TaskConfig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size, quarter = 2**config.bits, a.size // 4
    mask = np.zeros(a.size, dtype=bool)
    if config.holdout == "random":
        mask[np.random.default_rng(config.seed).permutation(a.size)[:quarter]] = True
    elif config.holdout == "value":
        low, high = size // 4, 3 * size // 4
        mask = (a >= low) & (a < high) & (b >= low) & (b < high)
    elif config.holdout == "token":
        mask[token_order(config, a, b)[:quarter]] = True
    return mask


def token_order(config: TaskConfig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pair indices by Hamming distance of the input bits to the centre (ties: by index)."""
    centre = (config.centre or default_centre(config.bits)).replace("*", "+")
    left, _, right = centre.partition("+")
    # The centre is written in the task's bit order, as the inputs are.
    ca, cb = from_bits(left, config.order), from_bits(right, config.order)
    distance = popcount(a ^ ca) + popcount(b ^ cb)
    return np.lexsort((np.arange(a.size), distance))


def popcount(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    count = np.zeros_like(values)
    while values.any():
        count += values & 1
        values = values >> 1
    return count


def parse_config(text: str | None) -> TaskConfig:
    """`config:` as `key=value` pairs separated by commas; errors name the key and what it expects."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"config: expected key=value pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value.strip()
    try:
        return TaskConfig.model_validate(pairs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"config: {problems}") from None


def load(spec: Any, suite: Any) -> Any:
    """arithmetic: binary add / mul / R over all operand pairs, with a held-out split (path: the task)"""
    import datasets

    if spec.path not in SYMBOLS:
        raise UsageError(f"path: the arithmetic task is add, mul or R, got {spec.path!r}")
    if spec.split not in ("train", "test", "all"):
        raise UsageError(f"split: train, test (the held-out pairs) or all, got {spec.split!r}")
    config = parse_config(spec.config)
    if config.holdout == "none" and spec.split == "test":
        raise UsageError("split: holdout=none holds nothing out, so there is no test split")
    return datasets.Dataset.from_list(make_task(spec.path, config).rows(spec.split))
