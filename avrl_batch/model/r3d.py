"""3D-ResNet video branch, layer for layer kenshohara/3D-ResNets-PyTorch ``models/resnet.py``.

Parameter names match that repository exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...) so its Kinetics checkpoints load by name (see ``weights.py``).
Differences, all deliberate:

- conv1 has kernel (7, 7, 7), stride (1, 2, 2), padding (3, 3, 3) as in the paper (kenshohara's
  newer code exposes this as ``conv1_t_size=7, conv1_t_stride=1``, which is the same layer);
- there is no ``fc``: the network returns the pooled feature (8 * width), the head lives in
  ``avrl.py``;
- ``width`` scales every stage (64-128-256-512 at width 64) so that the ``tiny`` preset is the
  same family, only narrower.
"""

from __future__ import annotations

import torch
from torch import nn

from avrl_batch.config import BLOCKS


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class ResNet3D(nn.Module):
    """3D-ResNet trunk with BasicBlocks and shortcut type B (1x1x1 conv + BN on a shape change).

    Input (B, C, T, H, W) -> output (B, 8 * width), the global average of layer4.
    """

    def __init__(
        self, layers: tuple[int, int, int, int], *, width: int = 64, in_channels: int = 3
    ) -> None:
        super().__init__()
        planes = [width, 2 * width, 4 * width, 8 * width]
        self.in_planes = planes[0]
        self.out_dim = planes[3] * BasicBlock.expansion
        self.conv1 = nn.Conv3d(
            in_channels,
            self.in_planes,
            kernel_size=(7, 7, 7),
            stride=(1, 2, 2),
            padding=(3, 3, 3),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0])
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))

        # kenshohara's initialisation, so a model trained from scratch matches theirs
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * BasicBlock.expansion:
            # shortcut B: a projection only where the shape changes
            downsample = nn.Sequential(
                conv1x1x1(self.in_planes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm3d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, T/2, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 8w, t, h, w)
        return self.avgpool(x).flatten(1)  # (B, 8w)


def r3d(depth: int, *, width: int = 64, in_channels: int = 3) -> ResNet3D:
    """The 3D-ResNet of the given depth (10, 18 or 34)."""
    return ResNet3D(BLOCKS[depth], width=width, in_channels=in_channels)


def r3d_10(*, width: int = 64, in_channels: int = 3) -> ResNet3D:
    return r3d(10, width=width, in_channels=in_channels)


def r3d_18(*, width: int = 64, in_channels: int = 3) -> ResNet3D:
    return r3d(18, width=width, in_channels=in_channels)


def r3d_34(*, width: int = 64, in_channels: int = 3) -> ResNet3D:
    return r3d(34, width=width, in_channels=in_channels)
