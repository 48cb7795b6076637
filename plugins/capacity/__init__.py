"""`capacity.*`: memorization capacity of networks (Bombari et al. 2022: the NTK at minimum
over-parameterization)."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.capacity.sweep import NTKCapacity


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(NTKCapacity)
