"""`collab.*`: collaborative learning with limited memorization (Li et al.), simulated."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.collab.bandit import CollaborativeBandit


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(CollaborativeBandit)
