"""`mbi.*`: memorization-based inference (Giacomini et al. 2023, "Towards model-size agnostic,
compute-free, memorization-based inference of deep learning"): a recurrent attention model's
computation replaced by table lookups, its accuracy and energy next to the computation it replaces.
Registers the methods `mbi.lookup` and `mbi.search` and the trainer `ram`; the RAM and ResNet-20
architectures are factories (`memeval_plugins.mbi.ram:ram`, `memeval_plugins.mbi.baselines:resnet`)."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.mbi.lookup import MemorizationInference
from memeval_plugins.mbi.ram import RamTrainer
from memeval_plugins.mbi.search import LookupSearch


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(MemorizationInference)
    registry.add_method(LookupSearch)
    registry.add_trainer("ram", RamTrainer)
