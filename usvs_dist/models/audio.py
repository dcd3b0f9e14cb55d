"""Audio encoders on log-mel: CNN14 (PANNs, Kong et al. 2020; dual2024's "1D-CNN14"), a tiny
CNN14 of the same layout, and a tiny 2D CNN for CPU.

Every encoder maps audio_B1MF (M mel bins, F frames) -> feat_BF' and states F' as `out_features`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usvs_dist.config.schema import DataConfig


class _ConvBlock(nn.Module):
    """PANNs ConvBlock: two 3x3 conv-BN-ReLU, then 2x2 average pooling (none in the last block)."""

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, M, F] -> [B, C', M/2, F/2] (same size in the last block)."""
        x = self.convs(x)
        # ceil_mode keeps a 1-bin axis alive when M or F is odd or small
        return F.avg_pool2d(x, 2, ceil_mode=True) if self.pool else x


class CNN14(nn.Module):
    """CNN14: BatchNorm over mel bins, six ConvBlocks (widths w..32w; w = 64 in PANNs), mean over
    mel, max + mean over time, a 32w -> 32w embedding layer. PANNs' dropout rates are kept.

    Input is mel x time (PANNs' is time x mel): `models.weights` transposes PANNs' conv kernels on
    loading. Pooling keeps a trailing odd row or column (ceil_mode) that PANNs drops, so the two
    agree exactly when M and F are multiples of 32.
    """

    def __init__(self, in_channels: int, width: int, n_mels: int, log_mel: dict[str, float] | None = None):
        super().__init__()
        widths = [width * 2**k for k in range(6)]
        self.out_features = widths[-1]
        self.log_mel = dict(log_mel or {})
        """The log-mel settings it is built for, by config key; pretrained weights are checked
        against them (empty: unknown, nothing checked)."""
        self.bn0 = nn.BatchNorm2d(n_mels)
        blocks, cin = [], in_channels
        for k, cout in enumerate(widths):
            blocks.append(_ConvBlock(cin, cout, pool=k < 5))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc1 = nn.Linear(widths[-1], widths[-1])

    def forward(self, audio_B1MF: torch.Tensor) -> torch.Tensor:
        """[B, C, M, F] -> [B, 32*width]."""
        # BatchNorm per mel bin: move M to the channel axis and back.
        x = self.bn0(audio_B1MF.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = F.dropout(block(x), p=0.2, training=self.training)
        x_BCF = x.mean(dim=2)
        x_BC = x_BCF.max(dim=2).values + x_BCF.mean(dim=2)
        x_BC = F.dropout(x_BC, p=0.5, training=self.training)
        return F.relu(self.fc1(x_BC))


def _conv2d(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyAudioEncoder(nn.Module):
    """Four strided 2D conv blocks over (mel, time) and global average pooling: the cheapest one."""

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


LOG_MEL_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
"""The `data.*` fields that decide what a log-mel bin and frame mean."""


def log_mel_settings(data: DataConfig) -> dict[str, float]:
    """The data config's log-mel settings by config key, e.g. {"data.sample_rate": 16000, ...}."""
    return {f"data.{k}": getattr(data, k) for k in LOG_MEL_KEYS}


def cnn14(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """CNN14 at the published width (64; F = 2048)."""
    del width
    return CNN14(in_channels, 64, data.n_mels, log_mel_settings(data))


def tiny_cnn14(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """CNN14's layout at base width `model.width // 2` (F = 16 x width)."""
    return CNN14(in_channels, max(1, width // 2), data.n_mels, log_mel_settings(data))


def tiny2d(in_channels: int, width: int, data: DataConfig) -> nn.Module:
    """TinyAudioEncoder from the registry's arguments."""
    return TinyAudioEncoder(in_channels, width)
