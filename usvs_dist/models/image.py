"""Image encoders: ResNet-18 (torchvision; dual2024's) and a tiny ResNet of the same blocks for CPU.

Every encoder maps image_BCHW -> feat_BF and states its F as `out_features`; its
`feature_map(image_BCHW)` is the last convolutional block's output before pooling, [B, F, h, w]
(what spatial decoders read; its spatial mean is `forward`'s feature).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from usvs_dist.config.schema import DataConfig


class ResNet18(ResNet):
    """torchvision's ResNet as `resnet18` builds it, with `feature_map`; `forward` is torchvision's
    own (conv1, bn1, relu, maxpool, layer1-4, global average pool, fc)."""

    def __init__(self):
        # torchvision.models.resnet18(weights=None) builds exactly this.
        super().__init__(BasicBlock, [2, 2, 2, 2])

    def feature_map(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> layer4's output [B, 512, H/32, W/32]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image_BCHW))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """torchvision's ResNet-18 without its classifier (F = 512); grey input replaces conv1.

    Its state dict keeps torchvision's key names, so torchvision (ImageNet) weight files load.
    """
    del width, data  # the published architecture has fixed widths
    net = ResNet18()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    net.out_features = 512
    return net


class TinyResNet(nn.Module):
    """ResNet at CPU size: torchvision's BasicBlock, one per stage, widths w..8w."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.out_features = 8 * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, inplanes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            stages.append(BasicBlock(inplanes, planes, stride, downsample))
            inplanes = planes
        self.stages = nn.Sequential(*stages)

    def forward(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 8*width]."""
        return self.stages(self.stem(image_BCHW)).mean(dim=(2, 3))

    def feature_map(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> the last stage's output [B, 8*width, H/32, W/32]."""
        return self.stages(self.stem(image_BCHW))


def tiny_resnet(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """TinyResNet from the registry's arguments."""
    return TinyResNet(in_channels, width)
