"""Plain nn.Modules (encoders, heads) and the name -> builder registries; no parallelism here.

The pretraining model is assembled from what a recipe's loss terms read (`outputs`): e.g.
{"video", "audio"} builds two encoders with projection heads, "va" adds dual2024's fusion,
"order_logits" the order-prediction head. Shapes: B batch, K sub-clips, F features, D latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from usvs_dist.config.schema import DataConfig, ModelConfig, RootConfig
from usvs_dist.models.audio import cnn14, tiny2d, tiny_cnn14
from usvs_dist.models.heads import Fusion, MLPHead, ProjectionHead
from usvs_dist.models.image import resnet18, tiny_resnet
from usvs_dist.models.video import r2plus1d18, tiny3d, tiny_r2plus1d
from usvs_dist.models.weights import load_encoder_weights

Builder = Callable[[int, int, DataConfig], nn.Module]
"""(input channels, model.width, data config) -> encoder with `out_features`."""

VIDEO_ENCODERS: dict[str, Builder] = {
    "r2plus1d_18": r2plus1d18,
    "tiny_r2plus1d": tiny_r2plus1d,
    "tiny3d": tiny3d,
}
AUDIO_ENCODERS: dict[str, Builder] = {"cnn14": cnn14, "tiny_cnn14": tiny_cnn14, "tiny2d": tiny2d}
IMAGE_ENCODERS: dict[str, Builder] = {"resnet18": resnet18, "tiny_resnet": tiny_resnet}
ENCODERS = {"video": VIDEO_ENCODERS, "audio": AUDIO_ENCODERS, "image": IMAGE_ENCODERS}

MODEL_OUTPUTS = frozenset(
    {"video", "audio", "image", "va", "vi", "image_view1", "image_view2", "order_logits", "rotation_logits"}
)
"""What a loss term may read from the model (see PretrainModel.forward)."""
_USES = {
    "video": {"video", "va", "vi", "order_logits", "rotation_logits"},
    "audio": {"audio", "va"},
    "image": {"image", "vi", "image_view1", "image_view2"},
}
_FUSIONS = {"va": ("video", "audio"), "vi": ("video", "image")}


def modalities_for(outputs: Iterable[str]) -> list[str]:
    """Encoders (video, audio, image) that computing `outputs` runs."""
    outputs = set(outputs)
    unknown = outputs - MODEL_OUTPUTS
    if unknown:
        raise ValueError(f"unknown model outputs {sorted(unknown)}; expected some of {sorted(MODEL_OUTPUTS)}")
    return [m for m, uses in _USES.items() if outputs & uses]


class PretrainModel(nn.Module):
    """Encoders by modality, their projection heads, fusions and pretext heads, as a recipe needs."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        embed_dim: int,
        outputs: Iterable[str],
        head_hidden: int = 128,
        subclips: int = 3,
        orders: int = 6,
        rotations: int = 4,
    ):
        super().__init__()
        outputs = set(outputs)
        self.outputs = frozenset(outputs)
        self.encoders = nn.ModuleDict(encoders)
        feat = {m: enc.out_features for m, enc in encoders.items()}
        projected = {m for m in encoders if m in outputs or (m == "image" and "image_view1" in outputs)}
        self.projections = nn.ModuleDict({m: ProjectionHead(feat[m], embed_dim) for m in sorted(projected)})
        self.fusions = nn.ModuleDict(
            {
                name: Fusion(feat[a], feat[b], embed_dim)
                for name, (a, b) in _FUSIONS.items()
                if name in outputs
            }
        )
        self.pretext = nn.ModuleDict()
        if "order_logits" in outputs:
            self.pretext["order"] = MLPHead(subclips * feat["video"], head_hidden, orders)
        if "rotation_logits" in outputs:
            self.pretext["rotation"] = MLPHead(feat["video"], head_hidden, rotations)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs by name -> outputs by name (only those this model was built for).

        Inputs: video [B, C, T, H, W], audio [B, 1, M, F], image [B, C, H, W], image_view1 and
        image_view2 [B, C, H, W], order_clips [B, K, C, T/K, H, W], rotated_video [B, C, T, H, W].
        Outputs: video, audio, image, va, vi, image_view1, image_view2 [B, D] (unnormalised),
        order_logits [B, P], rotation_logits [B, R].
        """
        feats = {m: self.encoders[m](inputs[m]) for m in self.encoders if m in inputs}
        out = {m: self.projections[m](f) for m, f in feats.items() if m in self.outputs}
        for name, (a, b) in _FUSIONS.items():
            if name in self.fusions:
                out[name] = self.fusions[name](feats[a], feats[b])
        if "image_view1" in self.outputs:
            # Both views in one pass: BatchNorm sees the pair, as in SimCLR.
            both = torch.cat([inputs["image_view1"], inputs["image_view2"]])
            out["image_view1"], out["image_view2"] = self.projections["image"](
                self.encoders["image"](both)
            ).chunk(2)
        if "order" in self.pretext:
            clips = inputs["order_clips"]
            B, K = clips.shape[:2]
            feat_BKF = self.encoders["video"](clips.flatten(0, 1)).view(B, K, -1)
            out["order_logits"] = self.pretext["order"](feat_BKF.flatten(1))
        if "rotation" in self.pretext:
            out["rotation_logits"] = self.pretext["rotation"](self.encoders["video"](inputs["rotated_video"]))
        return out


def check_names(cfg: ModelConfig, modalities: Iterable[str] = ("video", "audio", "image")) -> None:
    """Raise ValueError naming model.video / model.audio / model.image when not in the registries."""
    for modality in modalities:
        name, registry = getattr(cfg, modality), ENCODERS[modality]
        if name not in registry:
            raise ValueError(
                f"config key model.{modality}={name!r} is invalid: expected one of {', '.join(registry)}"
            )


def build_model(cfg: RootConfig, outputs: Iterable[str]) -> PretrainModel:
    """The pretraining model producing `outputs`, with weights from model.*_weights where set."""
    outputs = set(outputs)
    modalities = modalities_for(outputs)
    check_names(cfg.model, modalities)
    encoders = {}
    for modality in modalities:
        channels = 1 if modality == "audio" else cfg.data.channels
        encoder = ENCODERS[modality][getattr(cfg.model, modality)](channels, cfg.model.width, cfg.data)
        weights = getattr(cfg.model, f"{modality}_weights")
        if weights:
            load_encoder_weights(encoder, weights, modality)
        encoders[modality] = encoder
    pretext = cfg.objective.pretext
    return PretrainModel(
        encoders,
        cfg.model.embed_dim,
        outputs,
        head_hidden=cfg.model.head_hidden,
        subclips=pretext.subclips,
        orders=pretext.permutations or math.factorial(pretext.subclips),
        rotations=pretext.rotations,
    )


def encoder_state_dicts(model: PretrainModel) -> dict[str, dict[str, torch.Tensor]]:
    """Plain state dicts for downstream use, free of any wrapper: `{modality}_encoder`,
    `{modality}_head` (projection), `fusion_{va,vi}`, `{order,rotation}_head`."""

    def plain(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    out = {f"{m}_encoder": plain(e) for m, e in model.encoders.items()}
    out.update({f"{m}_head": plain(h) for m, h in model.projections.items()})
    out.update({f"fusion_{n}": plain(f) for n, f in model.fusions.items()})
    out.update({f"{n}_head": plain(h) for n, h in model.pretext.items()})
    return out
