"""Gaze saliency (docs/methods.md): a light decoder on a visual encoder's spatial feature map (its
last convolutional block before pooling, `feature_map`) predicts where the sonographer looked;
ground truth = fixations blurred by a Gaussian of eval.saliency_sigma x width; KLD, SIM, NSS, CC
(Bylinskii et al., as the MIT saliency benchmark computes them: `eval.metrics`) over scan folds.

Two protocols, as plane detection has: `linear` trains the decoder alone on the frozen encoder's
maps (computed once), `finetune` trains a copy of the encoder with the decoder. Work runs on the
encoder's device; maps and predictions come back on the CPU.

Shapes: N clips, S x S predicted map (S = MAP_SIZE), C feature-map channels, h x w its grid.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from usvs_dist.config.schema import EvalConfig
from usvs_dist.eval import metrics
from usvs_dist.eval.device import autocast, module_device
from usvs_dist.eval.probe import fold_rows, scan_folds
from usvs_dist.eval.progress import progress

MAP_SIZE = 32
"""Side of the predicted and ground-truth maps."""
PROTOCOLS = ("linear", "finetune")
"""linear: frozen encoder, the decoder trains; finetune: a copy of the encoder trains with it."""
DECODER_WIDTH = 32
"""Channels after the decoder's 1x1 reduction (halved at each of its two upsampling stages)."""


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


def _check_spatial(encoder: nn.Module) -> None:
    if not callable(getattr(encoder, "feature_map", None)):
        raise ValueError(
            f"saliency needs an encoder with a spatial feature_map (the video and image encoders "
            f"of usvs_dist.models); {type(encoder).__name__} has none"
        )


@torch.no_grad()
def feature_maps(encoder: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, C, h, w] frozen feature maps (inference mode), computed on the encoder's device,
    returned on CPU."""
    _check_spatial(encoder)
    encoder.eval()
    param = next(encoder.parameters())
    with autocast(param.device):
        return torch.cat(
            [
                encoder.feature_map(inputs[i : i + batch_size].to(param.device, param.dtype)).float().cpu()
                for i in range(0, len(inputs), batch_size)
            ]
        )


class SaliencyDecoder(nn.Module):
    """Feature map [N, C, h, w] -> log-probability map [N, S, S].

    BatchNorm standardises the channels (the encoder's scale is arbitrary, and moves when it is
    fine-tuned); a 1x1 conv reduces to DECODER_WIDTH channels; two stages of bilinear upsampling
    (to S/4, then S/2) and a 3x3 conv; upsampling to S and a 3x3 conv to one channel; log-softmax
    over the S x S pixels. Fixed stage sizes make it work on any h x w (1 x 1 included).
    """

    def __init__(self, in_channels: int, size: int = MAP_SIZE, width: int = DECODER_WIDTH):
        super().__init__()
        self.size = size
        self.norm = nn.BatchNorm2d(in_channels)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True))
        self.up = nn.Sequential(
            nn.Upsample(size=(size // 4, size // 4), mode="bilinear", align_corners=False),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(size=(size // 2, size // 2), mode="bilinear", align_corners=False),
            nn.Conv2d(width // 2, width // 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Upsample(size=(size, size), mode="bilinear", align_corners=False),
            nn.Conv2d(width // 4, 1, 3, padding=1),
        )

    def forward(self, map_NChw: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the S x S pixels."""
        x = self.up(self.reduce(self.norm(map_NChw))).flatten(1)
        return F.log_softmax(x, dim=1).view(-1, self.size, self.size)


def saliency_loss(logp_NSS: torch.Tensor, truth_NSS: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the predicted distribution to the ground truth normalised to sum 1
    (= KL(truth || prediction) + the truth's entropy, a constant), mean over maps."""
    target = truth_NSS.flatten(1)
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * logp_NSS.flatten(1)).sum(dim=1).mean()


def _batches(n: int, size: int, steps: int) -> list[torch.Tensor]:
    """`steps` batches of `size` rows: passes over a fresh permutation, a short tail left out
    (BatchNorm needs 2 samples, and equal batches weigh clips equally)."""
    if n < 2:
        raise ValueError(
            f"saliency: a fold trains on {n} clip; the decoder needs 2 at least (more clips or scans)"
        )
    out: list[torch.Tensor] = []
    while len(out) < steps:
        order = torch.randperm(n)
        out += [order[i : i + size] for i in range(0, n - size + 1, size)]
    return out[:steps]


def train_decoder(
    maps_NChw: torch.Tensor, truth_NSS: torch.Tensor, cfg: EvalConfig, device: torch.device | str = "cpu"
) -> SaliencyDecoder:
    """The linear protocol: a decoder trained on frozen maps (Adam eval.saliency_lr,
    eval.saliency_epochs passes in shuffled batches of eval.batch_size), on `device`, in eval mode."""
    torch.manual_seed(cfg.seed)
    decoder = SaliencyDecoder(maps_NChw.shape[1]).to(device).train()
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.saliency_lr)
    n = len(maps_NChw)
    size = max(2, min(cfg.batch_size, n))
    steps = cfg.saliency_epochs * max(1, n // size)
    for rows in _batches(n, size, steps):
        loss = saliency_loss(decoder(maps_NChw[rows].to(device)), truth_NSS[rows].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return decoder.eval()


def finetune_decoder(
    encoder: nn.Module, inputs: torch.Tensor, truth_NSS: torch.Tensor, cfg: EvalConfig
) -> tuple[nn.Module, SaliencyDecoder]:
    """The finetune protocol: a copy of the encoder and a decoder trained together (Adam, encoder
    lr eval.finetune_lr, decoder lr eval.saliency_lr, eval.finetune_steps batches of
    eval.batch_size) on the encoder's device; `encoder` itself is left untouched."""
    _check_spatial(encoder)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(encoder).train()
    param = next(model.parameters())
    decoder = SaliencyDecoder(model.out_features).to(param.device).train()
    opt = torch.optim.Adam(
        [
            {"params": model.parameters(), "lr": cfg.finetune_lr},
            {"params": decoder.parameters(), "lr": cfg.saliency_lr},
        ]
    )
    n = len(inputs)
    for rows in _batches(n, max(2, min(cfg.batch_size, n)), cfg.finetune_steps):
        with autocast(param.device):
            fmap = model.feature_map(inputs[rows].to(param.device, param.dtype)).float()
        loss = saliency_loss(decoder(fmap), truth_NSS[rows].to(param.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), decoder.eval()


@torch.no_grad()
def predict(decoder: SaliencyDecoder, maps_NChw: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, S, S] predicted probabilities (each map sums to 1), computed on the decoder's device,
    returned on CPU."""
    device = next(decoder.parameters()).device
    decoder.eval()
    return torch.cat(
        [
            decoder(maps_NChw[i : i + batch_size].to(device)).exp().cpu()
            for i in range(0, len(maps_NChw), batch_size)
        ]
    )


def saliency(
    encoder: nn.Module,
    inputs: torch.Tensor,
    points: torch.Tensor,
    scans: list[str],
    cfg: EvalConfig,
    protocols: tuple[str, ...] = PROTOCOLS,
    desc: str = "saliency",
) -> dict:
    """Per protocol: KLD, SIM, NSS, CC mean and std over scan folds; a few test predictions.

    Args:
        encoder: video or image encoder with `feature_map`; never modified.
        inputs: its inputs [N, ...].
        points: gaze points per clip [N, P, 2] (P = 1 for an image); clips without any are left out.
        protocols: some of PROTOCOLS; finetune is skipped when eval.finetune_steps is 0.
        desc: label of its progress lines (one per protocol and fold).

    Returns {"linear": {"kld": .., "kld_std": .., ...}, "finetune": {...}, "clips", "folds",
    "examples"}: examples = (rows, predictions, truths) of the first fold's first 4 test clips under
    the first protocol run (None when none ran).
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"saliency protocols {unknown}: expected some of {', '.join(PROTOCOLS)}")
    _check_spatial(encoder)
    has_gaze = ~torch.isnan(points).any(dim=-1)
    keep = has_gaze.any(dim=1).nonzero().flatten()
    if len(keep) == 0:
        raise ValueError("no clip has gaze points: the shards were built without gaze files")
    fixations = fixation_maps(points[keep])
    truth = blur(fixations, cfg.saliency_sigma)
    inputs = inputs[keep]
    scans = [scans[i] for i in keep.tolist()]
    folds = scan_folds(scans, cfg.folds, cfg.seed)
    device = module_device(encoder)
    maps = feature_maps(encoder, inputs, cfg.batch_size) if "linear" in protocols else None
    out: dict = {"clips": len(keep), "folds": len(folds), "examples": None}
    for protocol in protocols:
        if protocol == "finetune" and cfg.finetune_steps == 0:
            continue
        per_fold: dict[str, list[float]] = {"kld": [], "sim": [], "nss": [], "cc": []}
        with progress(len(folds), f"{desc} {protocol}") as advance:
            for train, test in fold_rows(folds, len(scans)):
                if protocol == "linear":
                    decoder = train_decoder(maps[train], truth[train], cfg, device)
                    pred = predict(decoder, maps[test], cfg.batch_size)
                else:
                    model, decoder = finetune_decoder(encoder, inputs[train], truth[train], cfg)
                    pred = predict(decoder, feature_maps(model, inputs[test], cfg.batch_size), cfg.batch_size)
                per_fold["kld"].append(metrics.kld(pred, truth[test]))
                per_fold["sim"].append(metrics.sim(pred, truth[test]))
                per_fold["cc"].append(metrics.cc(pred, truth[test]))
                per_fold["nss"].append(metrics.nss(pred, fixations[test]))
                if out["examples"] is None:
                    out["examples"] = (keep[test[:4]], pred[:4], truth[test[:4]])
                advance()
        summary = {}
        for name, values in per_fold.items():
            summary[name] = statistics.mean(values)
            summary[f"{name}_std"] = statistics.pstdev(values)
        out[protocol] = summary
    return out
