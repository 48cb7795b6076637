"""`classifier`: a torch classifier memeval trains itself under a condition (data source, label
noise, architecture, training method, optimizer, seed), once, cached by the hash of all of these.

The data comes from the recipe's own `source:` block (digits, mnist, or a Hugging Face dataset),
not from the suite's datasets. The trained model gives class logits, penultimate features,
parameters by layer, per-epoch checkpoints and the per-example training log (see
`memeval.train`). Training methods are looked up in `context.trainers` when the context has one
(the registry's), else in the built-in `standard`, `crosssplit` and `coteaching`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from memeval.models.base import AdapterContext, ModelAdapter
from memeval.train.classifier import ClassifierParams, TrainedClassifier, build_classifier
from memeval.train.metrics import LabelSet
from memeval.train.sources import ClassificationData
from memeval.train.trainers import BUILTIN_TRAINERS, Trainer, TrainingLog


class Classifier(ModelAdapter):
    name = "classifier"
    summary = ("a torch classifier (MLP, CNN or module:factory) trained by memeval under label noise with a "
               "chosen training method, cached by the hash of its recipe; logits, features, checkpoints, training log")
    Params = ClassifierParams
    capabilities = frozenset({"classify", "train"})

    def __init__(self, params: ClassifierParams, context: AdapterContext):
        super().__init__(params, context)
        trainers: Mapping[str, type[Trainer]] = getattr(context, "trainers", None) or BUILTIN_TRAINERS
        built = build_classifier(params, context.cache_dir, context.seed, trainers=trainers,
                                 base_dir=context.base_dir, log=context.log,
                                 before_training=lambda key: context.cache.require(1, f"trained classifier {key}"))
        self.trained_now = built.trained
        self.model = TrainedClassifier(built.directory, threads=params.threads, base_dir=context.base_dir)

    def identity(self) -> dict[str, Any]:
        return {"adapter": self.name, "recipe": self.model.key}

    @property
    def location(self) -> str:
        return str(self.model.directory)

    @property
    def summary_info(self) -> dict[str, Any]:
        """The stored summary: recipe, seed, shapes, noise counts, timings, final metrics."""
        return self.model.summary

    @property
    def networks(self) -> dict[str, torch.nn.Module]:
        return self.model.networks

    @property
    def checkpoint_epochs(self) -> list[int]:
        return self.model.checkpoint_epochs

    def data(self) -> ClassificationData:
        return self.model.data()

    def logits(self, x: np.ndarray | torch.Tensor, network: str | None = None) -> np.ndarray:
        return self.model.logits(x, network)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.model.predict(x)

    def features(self, x: np.ndarray | torch.Tensor, network: str | None = None) -> np.ndarray:
        return self.model.features(x, network)

    def parameters_by_layer(self, network: str | None = None, epoch: int | None = None
                            ) -> OrderedDict[str, OrderedDict[str, np.ndarray]]:
        return self.model.parameters_by_layer(network, epoch)

    def checkpoint(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        return self.model.checkpoint(epoch)

    def model_at(self, epoch: int, network: str | None = None) -> torch.nn.Module:
        return self.model.model_at(epoch, network)

    @property
    def training_log(self) -> TrainingLog:
        return self.model.log

    @property
    def labels(self) -> LabelSet:
        return self.model.labels
