"""Classifier architectures: `mlp`, `cnn` (small) and any `package.module:factory`.

Every model maps inputs of shape (batch, *input_shape) to class logits. The built-in models are a
`body` (named layers, ending in the penultimate activation) and a linear `head`, and have
`features(x)` = the body's output (the penultimate features). For a factory's module without a
`features` method, `features()` here captures the input of its last `nn.Linear` (the usual
penultimate layer) with a forward pre-hook.

A factory is called as `factory(input_shape, num_classes, **kwargs)` and must return a
`torch.nn.Module`. The cache key of a model built from one includes the sha256 of the factory's
source file, so editing that file retrains.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from memeval.errors import UsageError
from memeval.suite import Strict


class MLPArchitecture(Strict):
    kind: Literal["mlp"] = Field("mlp", description="a multilayer perceptron on the flattened input")
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="hidden layer widths")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer")


class CNNArchitecture(Strict):
    kind: Literal["cnn"] = Field("cnn", description="a small convolutional network (images)")
    channels: list[int] = Field(default_factory=lambda: [16, 32], min_length=1,
                                description="3x3 conv channels; each conv is followed by ReLU and 2x2 max-pool "
                                            "while the feature map is at least 2x2")
    hidden: int = Field(128, ge=1, description="width of the fully connected layer before the head")


class FactoryArchitecture(Strict):
    kind: Literal["factory"] = Field("factory", description="any torch module a callable builds")
    factory: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="package.module:callable")
    kwargs: dict[str, Any] = Field(default_factory=dict)


ArchitectureParams = Annotated[MLPArchitecture | CNNArchitecture | FactoryArchitecture,
                               Field(discriminator="kind")]


class MLP(nn.Module):
    """Flatten, then Linear+ReLU(+Dropout) per hidden width, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = int(np.prod(input_shape))
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout:
                layers[f"dropout{i}"] = nn.Dropout(dropout)
            width = size
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """3x3 convs (ReLU, 2x2 max-pool while the map is at least 2x2), a fully connected layer, a head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: list[int], hidden: int):
        super().__init__()
        if len(input_shape) != 3:
            raise UsageError(f"cnn needs image inputs (channels, height, width); got shape {input_shape}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        depth, height, width = input_shape
        for i, size in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(depth, size, kernel_size=3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            if min(height, width) >= 2:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                height, width = height // 2, width // 2
            depth = size
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(depth * height * width, hidden)
        layers["relu_fc"] = nn.ReLU()
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_model(params: MLPArchitecture | CNNArchitecture | FactoryArchitecture, input_shape: tuple[int, ...],
                num_classes: int) -> nn.Module:
    """A freshly initialised model (initialisation follows torch's global RNG)."""
    if isinstance(params, MLPArchitecture):
        return MLP(input_shape, num_classes, params.hidden, params.dropout)
    if isinstance(params, CNNArchitecture):
        return SmallCNN(input_shape, num_classes, params.channels, params.hidden)
    model = resolve_factory(params.factory)(input_shape, num_classes, **params.kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(f"architecture factory {params.factory!r} returned {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def resolve_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"architecture factory {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UsageError(f"architecture factory {spec!r}: {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"architecture factory {spec!r} is not callable")
    return target


def architecture_identity(params: MLPArchitecture | CNNArchitecture | FactoryArchitecture) -> dict[str, Any]:
    """What of the architecture goes into the cache key: its settings, and for a factory the hash
    of the factory's source file."""
    ident = params.model_dump()
    if isinstance(params, FactoryArchitecture):
        source = inspect.getsourcefile(resolve_factory(params.factory))
        ident["source_sha256"] = (hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
                                  if source else None)
    return ident


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's penultimate features: `model.features(x)` when it has one, else the input of its
    last nn.Linear."""
    if callable(getattr(model, "features", None)):
        return model.features(x)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(f"{type(model).__name__} has no features() method and no nn.Linear layer, "
                         f"so its penultimate features are undefined")
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[-1]


def layer_parameters(model: nn.Module) -> OrderedDict[str, OrderedDict[str, torch.Tensor]]:
    """Parameters grouped by the module that owns them ('body.fc1' -> {'weight': ..., 'bias': ...}),
    in definition order."""
    layers: OrderedDict[str, OrderedDict[str, torch.Tensor]] = OrderedDict()
    for name, param in model.named_parameters():
        layer, _, leaf = name.rpartition(".")
        layers.setdefault(layer, OrderedDict())[leaf] = param
    return layers
