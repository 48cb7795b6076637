"""`localization.*`: where in a classifier memorization of mislabeled examples lives (Maini et al., ICML 2023)."""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.localization.example_tied_dropout import (
    ExampleTiedDropout,
    ExampleTiedDropoutTrainer,
)
from memeval_plugins.localization.gradient_accounting import GradientAccounting
from memeval_plugins.localization.layer_rewinding import LayerRewinding
from memeval_plugins.localization.neuron_flipping import NeuronFlipping
from memeval_plugins.localization.retraining import Retraining


@hookimpl
def memeval_register(registry: Registry) -> None:
    for method in (GradientAccounting, LayerRewinding, Retraining, NeuronFlipping, ExampleTiedDropout):
        registry.add_method(method)
    registry.add_trainer(ExampleTiedDropoutTrainer.name, ExampleTiedDropoutTrainer)
