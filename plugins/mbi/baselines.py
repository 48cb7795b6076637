"""A ResNet-20-style CNN (He et al., CVPR 2016, section 4.2: the CIFAR-10 ResNet with n = 3), the
compute-in-memory baseline the MBI paper compares against, as a `classifier` architecture factory:
`{kind: factory, factory: memeval_plugins.mbi.baselines:resnet, kwargs: {blocks: 3, width: 16}}`.

A 3x3 conv of `width` channels, then three stages of `blocks` basic blocks (two 3x3 convs with batch
norm and ReLU, identity shortcut) at `width`, 2 `width`, 4 `width` channels, the last two stages
starting with stride 2 (the shortcut then a 1x1 stride-2 conv with batch norm, He et al.'s option B),
global average pooling and a linear head: 6 `blocks` + 2 weighted layers (20 for blocks = 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memeval.api import UsageError


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, blocks: int = 3, width: int = 16
    ):
        super().__init__()
        if len(input_shape) != 3 or blocks < 1 or width < 1:
            raise UsageError(
                f"resnet needs image inputs (channels, height, width), blocks >= 1 and width >= 1; "
                f"got shape {input_shape}, blocks={blocks}, width={width}"
            )
        self.stem = nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        channels = width
        for stage, outputs in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(channels, outputs, 2 if stage and b == 0 else 1))
                channels = outputs
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn(self.stem(x))))
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet(
    input_shape: tuple[int, ...], num_classes: int, blocks: int = 3, width: int = 16
) -> ResNet:
    return ResNet(input_shape, num_classes, blocks, width)
