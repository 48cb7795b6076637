"""`label_noise.*`: what a classifier trained on noisy labels memorized (Kim et al. 2023, CrossSplit)."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.label_noise.memorization import LabelNoiseMemorization


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(LabelNoiseMemorization)
