"""Folds by scan, the linear probe, fine-tuning and the saliency ground truth on constructed data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from usvs_dist.config import EvalConfig
from usvs_dist.eval.probe import linear_probe, plane_detection, scan_folds
from usvs_dist.eval.saliency import blur, fixation_maps


class Flatten(nn.Module):
    """A fixed 'encoder': its features are the input itself (plus a parameter for fine-tuning)."""

    def __init__(self, features: int):
        super().__init__()
        self.out_features = features
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale


def _planes_data(n_scans: int = 6, per_scan: int = 8, noise: float = 0.1):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n_scans * per_scan) % 4
    centres = torch.randn(4, 6, generator=g) * 3
    x = centres[labels] + noise * torch.randn(len(labels), 6, generator=g)
    scans = [f"scan{i // per_scan}" for i in range(len(labels))]
    return x, labels, scans


def test_folds_never_split_a_scan_and_cover_every_clip():
    scans = [f"s{i % 7}" for i in range(40)]
    folds = scan_folds(scans, 5, seed=1)
    assert len(folds) == 5 and sorted(i for f in folds for i in f) == list(range(40))
    for fold in folds:
        assert not {scans[i] for i in fold} & {scans[i] for f in folds if f is not fold for i in f}
    assert len(scan_folds(scans[:6], 5, 0)) == 5 and len(scan_folds(["a", "a", "b"], 2, 0)) == 2


def test_folds_refuse_fewer_scans_than_folds_naming_the_count_and_the_fixes():
    # Shrinking k to the scan count would report 3-fold figures as 5-fold ones.
    with pytest.raises(ValueError) as refused:
        scan_folds(["a", "b", "b", "c"], 5, seed=0)
    message = str(refused.value)
    assert "3 scans" in message and "eval.folds=5" in message
    assert "lower eval.folds" in message and "eval.max_clips" in message
    with pytest.raises(ValueError, match="at least 2 scans, found 1"):
        scan_folds(["a", "a"], 2, seed=0)


def test_linear_probe_separates_separable_classes():
    x, y, _ = _planes_data()
    assert torch.equal(linear_probe(x, y, x, l2=1e-3, iters=100, classes=4), y)


def test_plane_detection_scores_separable_features_perfectly_and_noise_near_chance():
    x, y, scans = _planes_data()
    cfg = EvalConfig(folds=3, finetune_steps=100, batch_size=8)
    good = plane_detection(Flatten(6), x, y, scans, cfg, classes=4)
    assert good["linear"]["f1"] == 1.0 and good["finetune"]["f1"] > 0.9 and good["folds"] == 3
    assert good["linear"]["confusion"].sum() == len(y)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    bad = plane_detection(Flatten(6), noise, y, scans, cfg, protocols=("linear",), classes=4)
    assert bad["linear"]["f1"] < 0.6


def test_fixations_and_blurred_truth():
    maps = fixation_maps(
        torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.5, float("nan")], [float("nan"), 0.0]]]), size=8
    )
    assert maps[0, 0, 0] == 1 and maps[0, 7, 7] == 1 and maps[0].sum() == 2 and maps[1].sum() == 0
    truth = blur(fixation_maps(torch.tensor([[[0.5, 0.5]]]), size=16), 1 / 16)
    assert truth.max() == 1.0 and truth[0, 8, 8] == 1.0 and truth[0, 0, 0] < 1e-3
