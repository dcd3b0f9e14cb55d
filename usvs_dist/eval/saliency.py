"""Gaze saliency (docs/methods.md): a decoder on a frozen encoder predicts where the sonographer
looked; ground truth = fixations blurred by a Gaussian of eval.saliency_sigma x width; KLD, SIM,
NSS, CC (Bylinskii et al.) over scan folds. Shapes: N clips, S x S map, F features.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch import nn

from usvs_dist.config.schema import EvalConfig
from usvs_dist.eval import metrics
from usvs_dist.eval.probe import features, scan_folds

MAP_SIZE = 32
"""Side of the predicted and ground-truth maps."""


def fixation_maps(points_NP2: torch.Tensor, size: int = MAP_SIZE) -> torch.Tensor:
    """[N, S, S] binary maps of gaze points ([N, P, 2] x, y in [0, 1]; NaN points ignored)."""
    n = points_NP2.shape[0]
    maps = torch.zeros(n, size, size)
    for i in range(n):
        for x, y in points_NP2[i].tolist():
            if x == x and y == y:  # not NaN
                maps[i, round(y * (size - 1)), round(x * (size - 1))] = 1.0
    return maps


def blur(fixations_NSS: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Continuous ground truth: fixations convolved with a Gaussian of sigma_fraction x width, max 1."""
    size = fixations_NSS.shape[-1]
    sigma = max(sigma_fraction * size, 0.5)
    radius = int(3 * sigma) + 1
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    maps = fixations_NSS.unsqueeze(1)
    maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0)), g.view(1, 1, 1, -1))
    maps = F.conv2d(F.pad(maps, (0, 0, radius, radius)), g.view(1, 1, -1, 1)).squeeze(1)
    return maps / maps.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)


class SaliencyDecoder(nn.Module):
    """Features [N, F] -> log-probability map [N, S, S]: a linear seed map, then upsampling convs."""

    def __init__(self, in_features: int, size: int = MAP_SIZE):
        super().__init__()
        self.size = size
        self.seed = nn.Linear(in_features, 32 * 4 * 4)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(16, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(size=(size, size), mode="bilinear", align_corners=False),
            nn.Conv2d(8, 1, 3, padding=1),
        )

    def forward(self, feat_NF: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the S x S pixels."""
        x = self.up(F.relu(self.seed(feat_NF)).view(-1, 32, 4, 4)).flatten(1)
        return F.log_softmax(x, dim=1).view(-1, self.size, self.size)


def _train_decoder(feats: torch.Tensor, truth: torch.Tensor, cfg: EvalConfig) -> SaliencyDecoder:
    torch.manual_seed(cfg.seed)
    decoder = SaliencyDecoder(feats.shape[1])
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    target = truth.flatten(1) / truth.flatten(1).sum(dim=1, keepdim=True)
    mean, std = feats.mean(dim=0), feats.std(dim=0) + 1e-6
    x = (feats - mean) / std
    for _ in range(cfg.saliency_epochs):
        for i in range(0, len(x), cfg.batch_size):
            loss = (
                -(target[i : i + cfg.batch_size] * decoder(x[i : i + cfg.batch_size]).flatten(1))
                .sum(1)
                .mean()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    decoder.norm = (mean, std)
    return decoder.eval()


def saliency(
    encoder: nn.Module, inputs: torch.Tensor, points: torch.Tensor, scans: list[str], cfg: EvalConfig
) -> dict:
    """KLD, SIM, NSS, CC mean and std over scan folds, and a few test predictions for a figure.

    Args:
        encoder: frozen video or image encoder.
        inputs: its inputs [N, ...].
        points: gaze points per clip [N, P, 2] (P = 1 for an image); clips without any are left out.
    """
    has_gaze = ~torch.isnan(points).any(dim=-1)
    keep = has_gaze.any(dim=1).nonzero().flatten()
    if len(keep) == 0:
        raise ValueError("no clip has gaze points: the shards were built without gaze files")
    fixations = fixation_maps(points[keep])
    truth = blur(fixations, cfg.saliency_sigma)
    scans = [scans[i] for i in keep.tolist()]
    feats = features(encoder, inputs[keep], cfg.batch_size)
    folds = scan_folds(scans, cfg.folds, cfg.seed)
    per_fold: dict[str, list[float]] = {"kld": [], "sim": [], "nss": [], "cc": []}
    examples = None
    for test_rows in folds:
        test = torch.tensor(test_rows)
        train = torch.tensor([i for i in range(len(scans)) if i not in set(test_rows)])
        decoder = _train_decoder(feats[train], truth[train], cfg)
        mean, std = decoder.norm
        with torch.no_grad():
            pred = decoder((feats[test] - mean) / std).exp()
        per_fold["kld"].append(metrics.kld(pred, truth[test]))
        per_fold["sim"].append(metrics.sim(pred, truth[test]))
        per_fold["cc"].append(metrics.cc(pred, truth[test]))
        per_fold["nss"].append(metrics.nss(pred, fixations[test]))
        if examples is None:
            examples = (keep[test[:4]], pred[:4], truth[test[:4]])
    out: dict = {"clips": len(keep), "folds": len(folds), "examples": examples}
    for name, values in per_fold.items():
        out[name] = statistics.mean(values)
        out[f"{name}_std"] = statistics.pstdev(values)
    return out
