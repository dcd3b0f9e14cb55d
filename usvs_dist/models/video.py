"""Video encoders: R(2+1)D-18 (torchvision; dual2024's), a tiny R(2+1)D and a tiny 3D CNN for CPU.

Every encoder maps video_BCTHW -> feat_BF and states its F as `out_features`; its
`feature_map(video_BCTHW)` is the last convolutional block's output before pooling, averaged over
time: [B, F, h, w] (what spatial decoders read; its spatial mean is `forward`'s feature).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

from usvs_dist.config.schema import DataConfig


class R2Plus1D18(VideoResNet):
    """torchvision's VideoResNet as `r2plus1d_18` builds it, with `feature_map`; `forward` is
    torchvision's own (stem, layer1-4, global average pool, fc)."""

    def __init__(self):
        # torchvision.models.video.r2plus1d_18(weights=None) builds exactly this.
        super().__init__(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem)

    def feature_map(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> layer4's output averaged over time [B, 512, H/16, W/16]."""
        x = self.stem(video_BCTHW)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=2)


def r2plus1d18(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """torchvision's R(2+1)D-18 without its classifier (F = 512); grey input replaces the first conv.

    Its state dict keeps torchvision's key names, so torchvision (Kinetics) weight files load.
    """
    del width, data  # the published architecture has fixed widths
    net = R2Plus1D18()
    if in_channels != 3:
        old = net.stem[0]
        net.stem[0] = nn.Conv3d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
    net.fc = nn.Identity()
    net.out_features = 512
    return net


class TinyR2Plus1D(nn.Module):
    """R(2+1)D at CPU size: the same (2+1)D residual blocks, one per stage, widths w..8w."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.out_features = 8 * width
        self.stem = nn.Sequential(
            Conv2Plus1D(in_channels, width, midplanes=width, stride=2),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        stages, inplanes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
                )
            stages.append(BasicBlock(inplanes, planes, Conv2Plus1D, stride, downsample))
            inplanes = planes
        self.stages = nn.Sequential(*stages)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, 8*width]."""
        return self.stages(self.stem(video_BCTHW)).mean(dim=(2, 3, 4))

    def feature_map(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> the last stage's output averaged over time [B, 8*width, H/16, W/16]."""
        return self.stages(self.stem(video_BCTHW)).mean(dim=2)


def _conv3d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class TinyVideoEncoder(nn.Module):
    """Four plain 3D conv blocks (spatial stride first, then temporal): the cheapest video encoder."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.out_features = 8 * width
        self.blocks = nn.Sequential(
            _conv3d(in_channels, width, (1, 2, 2)),
            _conv3d(width, 2 * width, (1, 2, 2)),
            _conv3d(2 * width, 4 * width, (2, 2, 2)),
            _conv3d(4 * width, 8 * width, (2, 2, 2)),
        )

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, 8*width]."""
        return self.blocks(video_BCTHW).mean(dim=(2, 3, 4))

    def feature_map(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> the last block's output averaged over time [B, 8*width, H/16, W/16]."""
        return self.blocks(video_BCTHW).mean(dim=2)


def tiny_r2plus1d(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """TinyR2Plus1D from the registry's arguments."""
    return TinyR2Plus1D(in_channels, width)


def tiny3d(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """TinyVideoEncoder from the registry's arguments."""
    return TinyVideoEncoder(in_channels, width)
