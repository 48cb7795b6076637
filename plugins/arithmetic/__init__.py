"""`arithmetic.*`: does a model compute or recall? Binary arithmetic on held-out operand pairs and
tokens, and the encoding–regression–decoding probes (Maltoni & Ferrara, Neural Networks 2024)."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.arithmetic.data import load
from memeval_plugins.arithmetic.erd import Erd
from memeval_plugins.arithmetic.extrapolation import Extrapolation


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_loader("arithmetic", load)
    registry.add_method(Extrapolation)
    registry.add_method(Erd)
