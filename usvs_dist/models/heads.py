"""Heads on encoder features: projection to the shared latent, dual2024's fusion, pretext MLPs."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear map to the shared latent followed by BatchNorm (dual2024's mu(x) = BN(theta f + b)).

    In training the BatchNorm normalises over the global batch, every rank's rows: the engine
    (`dist.engine.distribute_batchnorm`) swaps `norm` for a GlobalBatchNorm1d, which keeps these
    keys and tensors. It is done there because models stay plain modules that never import dist/;
    built alone (eval, one process) the head is exactly this.
    """

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        self.norm = nn.BatchNorm1d(embed_dim)

    def forward(self, feat_BF: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, D]."""
        return self.norm(self.proj(feat_BF))


class Fusion(nn.Module):
    """dual2024's V_theta(x, y) = W [x ; y] + b: concatenated features to the shared latent."""

    def __init__(self, x_features: int, y_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(x_features + y_features, embed_dim)

    def forward(self, x_BF: torch.Tensor, y_BG: torch.Tensor) -> torch.Tensor:
        """[B, F], [B, G] -> [B, D]."""
        return self.proj(torch.cat([x_BF, y_BG], dim=1))


class MLPHead(nn.Module):
    """Small MLP classifier of a pretext task (isbi2020): Linear-BN-ReLU-Linear."""

    def __init__(self, in_features: int, hidden: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def forward(self, feat_BF: torch.Tensor) -> torch.Tensor:
        """[B, F] -> logits [B, classes]."""
        return self.net(feat_BF)
