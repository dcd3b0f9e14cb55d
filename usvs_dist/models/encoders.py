"""Tiny CPU encoders: a 3D-conv video encoder and a 2D-conv log-mel audio encoder.

Shapes: video_BCTHW -> feat_BF, audio_B1MF -> feat_BF (F = feature width). Paper-size encoders
(R(2+1)D-18, ResNet-18, CNN14) join the same registry.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


def _conv2d(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyVideoEncoder(nn.Module):
    """Four 3D conv blocks (spatial stride first, then temporal) and global average pooling."""

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


class TinyAudioEncoder(nn.Module):
    """Four 2D conv blocks over (mel, time) and global average pooling."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.out_features = 8 * width
        self.blocks = nn.Sequential(
            _conv2d(in_channels, width, 2),
            _conv2d(width, 2 * width, 2),
            _conv2d(2 * width, 4 * width, 2),
            _conv2d(4 * width, 8 * width, 2),
        )

    def forward(self, audio_B1MF: torch.Tensor) -> torch.Tensor:
        """[B, 1, M, F] -> [B, 8*width]."""
        return self.blocks(audio_B1MF).mean(dim=(2, 3))
