"""`precog.*`: how much of a downstream example a pre-trained masked LM has memorized (Ranaldi et
al. 2023, PreCog) and how it relates to a downstream model's correctness."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.precog.score import PreCog


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(PreCog)
