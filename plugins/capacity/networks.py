"""The networks of the `capacity.ntk` sweep: the paper's deep fully-connected net, or any torch
module factory of `memeval.api` (the built-in MLP and CNN, or `package.module:callable`), built at
a given width with one scalar output; and the inputs it is measured on."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from memeval.api import (
    CNNArchitecture,
    FactoryArchitecture,
    MLPArchitecture,
    Strict,
    build_architecture,
)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class DeepFC(Strict):
    kind: Literal["deep-fc"] = Field("deep-fc", description="a deep fully-connected net as in Bombari et al. "
                                                            "2022: no biases, Gaussian weights of variance "
                                                            "1/fan_in, one scalar output")
    depth: int = Field(3, ge=2, description="weight layers fc1..fc<depth>; every hidden layer has the sweep's width")
    activation: Literal["relu", "tanh", "gelu", "softplus"] = Field(
        "tanh", description="the non-linearity (a narrow ReLU net without biases can switch off a sample "
                            "entirely: a zero row of J)")
    bias: bool = Field(False, description="give every layer a bias (initialised at zero)")


NetworkParams = Annotated[DeepFC | MLPArchitecture | CNNArchitecture | FactoryArchitecture,
                          Field(discriminator="kind")]


class DeepFCNet(nn.Sequential):
    """flatten, fc1, act1, ..., fc<depth>: the layers are named so a block is `fc2`."""

    def __init__(self, inputs: int, width: int, spec: DeepFC):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        sizes = [inputs] + [width] * (spec.depth - 1) + [1]
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False), start=1):
            layer = nn.Linear(fan_in, fan_out, bias=spec.bias)
            nn.init.normal_(layer.weight, std=fan_in ** -0.5)
            if spec.bias:
                nn.init.zeros_(layer.bias)
            layers[f"fc{i}"] = layer
            if i < spec.depth:
                layers[f"act{i}"] = ACTIVATIONS[spec.activation]()
        super().__init__(layers)


def build_network(spec: DeepFC | MLPArchitecture | CNNArchitecture | FactoryArchitecture, width: int,
                  input_shape: tuple[int, ...], width_param: str, seed: int) -> nn.Module:
    """A freshly initialised float64 network of `width` with one output, initialised from `seed`."""
    torch.manual_seed(seed)
    if isinstance(spec, DeepFC):
        return DeepFCNet(int(np.prod(input_shape)), width, spec).double()
    if isinstance(spec, MLPArchitecture):
        spec = spec.model_copy(update={"hidden": [width] * len(spec.hidden)})
    elif isinstance(spec, CNNArchitecture):
        spec = spec.model_copy(update={"hidden": width})
    else:
        spec = spec.model_copy(update={"kwargs": {**spec.kwargs, width_param: width}})
    return build_architecture(spec, input_shape, 1).double()


def sphere(n: int, input_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """n points uniform on the sphere of radius sqrt(d) in d = prod(input_shape) dimensions."""
    generator = torch.Generator().manual_seed(seed)
    d = int(np.prod(input_shape))
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return (x * d ** 0.5 / x.norm(dim=1, keepdim=True)).reshape(n, *input_shape)
