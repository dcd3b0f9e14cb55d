"""Gaze saliency: the spatial decoder, the linear and finetune protocols on the tiny encoders, and
a learnability check: on frames whose bright blob is where the gaze is, a decoder reading the
feature map beats one reading the pooled feature."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from usvs_dist.config import EvalConfig, load_config
from usvs_dist.eval import report, tasks
from usvs_dist.eval.encoders import Encoders
from usvs_dist.eval.saliency import (
    MAP_SIZE,
    PROTOCOLS,
    SaliencyDecoder,
    blur,
    finetune_decoder,
    fixation_maps,
    saliency,
)
from usvs_dist.models import ENCODERS
from usvs_dist.models.image import TinyResNet

DATA = load_config().data
TINY_VISUAL = [("video", "tiny3d"), ("video", "tiny_r2plus1d"), ("image", "tiny_resnet")]
METRICS = {f"{m}{s}" for m in ("kld", "sim", "nss", "cc") for s in ("", "_std")}


def _blobs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey frames [n, 1, size, size], each a bright Gaussian blob on faint noise, and the gaze
    point [n, 1, 2] (x, y in [0, 1]) at the blob's centre."""
    g = torch.Generator().manual_seed(seed)
    points = 0.15 + 0.7 * torch.rand(n, 2, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    d2 = (xx - points[:, 0, None, None]) ** 2 + (yy - points[:, 1, None, None]) ** 2
    frames = torch.exp(-d2 / (2 * 0.06**2)) + 0.05 * torch.rand(n, size, size, generator=g)
    return frames[:, None], points[:, None]


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


class Pooled(nn.Module):
    """The encoder with its feature map replaced by the map's spatial mean at every position: what
    a decoder of the pooled feature (the former protocol) has to go on."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.out_features = encoder.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.encoder.feature_map(x)
        return fmap.mean(dim=(2, 3), keepdim=True).expand_as(fmap)


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (4, 4), (7, 5)])
def test_decoder_gives_a_distribution_at_map_size_from_any_grid(grid):
    logp = SaliencyDecoder(6)(torch.randn(3, 6, *grid))
    assert logp.shape == (3, MAP_SIZE, MAP_SIZE)
    torch.testing.assert_close(logp.exp().sum(dim=(1, 2)), torch.ones(3))


@pytest.mark.parametrize(("modality", "name"), TINY_VISUAL)
def test_both_protocols_run_on_every_tiny_encoder_and_leave_it_untouched(modality, name):
    encoder = ENCODERS[modality][name](1, 4, DATA).eval()
    n = 9
    x = torch.rand(n, 1, 4, 32, 32) if modality == "video" else torch.rand(n, 1, 32, 32)
    points = torch.rand(n, 4 if modality == "video" else 1, 2)
    points[0] = float("nan")  # a clip without gaze is left out
    if modality == "video":
        points[1, 0] = float("nan")  # one frame without gaze: the clip's other points count
    before = _state(encoder)
    cfg = EvalConfig(folds=2, saliency_epochs=1, finetune_steps=2, batch_size=4)
    out = saliency(encoder, x, points, [f"s{i // 3}" for i in range(n)], cfg)
    assert out["clips"] == n - 1 and out["folds"] == 2
    for protocol in PROTOCOLS:
        assert set(out[protocol]) == METRICS and all(math.isfinite(v) for v in out[protocol].values())
    rows, pred, truth = out["examples"]
    assert pred.shape == truth.shape == (len(rows), MAP_SIZE, MAP_SIZE) and 0 not in rows.tolist()
    torch.testing.assert_close(pred.sum(dim=(1, 2)), torch.ones(len(rows)))
    assert _same(encoder.state_dict(), before)


def test_the_linear_protocol_reads_the_frozen_maps_once():
    encoder = TinyResNet(1, 4).eval()
    calls = []
    feature_map = encoder.feature_map
    encoder.feature_map = lambda x: calls.append(len(x)) or feature_map(x)
    x, points = _blobs(12, 32)
    before = _state(encoder)
    cfg = EvalConfig(folds=3, saliency_epochs=2, batch_size=4)
    out = saliency(encoder, x, points, [f"s{i // 3}" for i in range(12)], cfg, ("linear",))
    assert calls == [4, 4, 4]  # once over the clips, not per fold or per epoch
    assert set(out) == {"clips", "folds", "examples", "linear"}
    assert _same(encoder.state_dict(), before)


def test_the_finetune_protocol_trains_a_copy_of_the_encoder():
    encoder = TinyResNet(1, 4).eval()
    x, points = _blobs(8, 32)
    truth = blur(fixation_maps(points), 1 / 16)
    before = _state(encoder)
    model, decoder = finetune_decoder(encoder, x, truth, EvalConfig(finetune_steps=2, batch_size=4))
    assert model is not encoder and not model.training and not decoder.training
    assert _same(encoder.state_dict(), before)
    changed = [
        k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert "stem.0.weight" in changed and "stages.3.conv2.weight" in changed


def test_skipped_finetuning_and_unknown_protocols():
    x, points = _blobs(8, 32)
    scans = [f"s{i // 2}" for i in range(8)]
    out = saliency(
        TinyResNet(1, 4), x, points, scans, EvalConfig(folds=2, saliency_epochs=1, finetune_steps=0)
    )
    assert "linear" in out and "finetune" not in out
    with pytest.raises(ValueError, match="saliency protocols \\['probe'\\]"):
        saliency(TinyResNet(1, 4), x, points, scans, EvalConfig(), ("probe",))
    with pytest.raises(ValueError, match="needs an encoder with a spatial feature_map.*Linear has none"):
        saliency(nn.Linear(4, 4), x, points, scans, EvalConfig())


def test_the_feature_map_finds_the_gaze_that_the_pooled_feature_cannot():
    # A random (untrained) encoder still keeps where the bright blob is in its map; the pooled
    # feature keeps only that there is one, so its decoder learns little beyond a centre bias.
    torch.manual_seed(0)
    encoder = TinyResNet(1, 4).eval()
    x, points = _blobs(32, 128)  # a 4 x 4 map
    scans = [f"s{i // 8}" for i in range(32)]
    cfg = EvalConfig(folds=2, saliency_epochs=30, batch_size=8, saliency_lr=3e-3)
    spatial = saliency(encoder, x, points, scans, cfg, ("linear",))["linear"]
    pooled = saliency(Pooled(encoder), x, points, scans, cfg, ("linear",))["linear"]
    assert spatial["cc"] > pooled["cc"] + 0.3, (spatial, pooled)
    assert spatial["nss"] > pooled["nss"] + 1.5, (spatial, pooled)
    assert spatial["kld"] < pooled["kld"] and spatial["sim"] > pooled["sim"]


def test_the_task_names_metrics_by_protocol_and_kld_gains_when_lower():
    cfg = load_config(None, ["eval.saliency_encoder=image", "eval.folds=2", "eval.saliency_epochs=1"])
    cfg.eval.finetune_steps = 1
    x, points = _blobs(8, 32)
    clips = SimpleNamespace(image=x, image_gaze=points[:, 0], scan=[f"s{i // 2}" for i in range(8)])
    enc = Encoders(cfg, {"image": TinyResNet(1, 4)}, {}, "tiny")
    found, examples = tasks.gaze_saliency(enc, clips, ("linear", "finetune"))
    assert set(found) == {f"saliency/{p}/{m}" for p in PROTOCOLS for m in METRICS}
    assert examples[1].shape[1:] == (MAP_SIZE, MAP_SIZE)
    found, _ = tasks.gaze_saliency(enc, clips, ("finetune",))
    assert {k.split("/")[1] for k in found} == {"finetune"}
    pretrained = {"saliency/finetune/kld": 1.0, "saliency/linear/kld": 1.5, "saliency/linear/cc": 0.5}
    random = {"saliency/finetune/kld": 2.0, "saliency/linear/kld": 2.0, "saliency/linear/cc": 0.25}
    assert report.gains(pretrained, random) == {
        "saliency/finetune/kld": 1.0,
        "saliency/linear/kld": 0.5,
        "saliency/linear/cc": 0.25,
    }
