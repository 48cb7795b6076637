"""The miniature classifier recipe the fast tests share."""

from __future__ import annotations

from typing import Any

from memeval.train.classifier import ClassifierParams

TINY: dict[str, Any] = {
    "source": {"kind": "digits", "train_limit": 240, "test_limit": 120},
    "architecture": {"kind": "mlp", "hidden": [32]},
    "noise": {"kind": "symmetric", "rate": 0.4},
    "optimizer": {"name": "adam", "lr": 0.01, "epochs": 6},
    "trainer_params": {"crosssplit": {"warmup_epochs": 2, "relaxation_epochs": 1, "rampup_epochs": 2}},
    "checkpoint_every": 1,
}


def tiny(**overrides: Any) -> ClassifierParams:
    """A miniature recipe (240 digits, one hidden layer of 32, 6 epochs: well under a second)."""
    raw = {**TINY, **overrides}
    for key in ("optimizer", "source", "architecture", "noise"):
        if key in overrides:
            raw[key] = {**TINY[key], **overrides[key]}
    return ClassifierParams.model_validate(raw)
