"""`influence.*`: influence-function scores of training examples as memorization scores."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.influence.self_influence import SelfInfluence


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(SelfInfluence)
