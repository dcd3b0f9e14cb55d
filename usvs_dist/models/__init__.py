"""Plain nn.Modules (encoders, heads) and the name -> builder registries; no parallelism here."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from usvs_dist.config.schema import DataConfig, ModelConfig
from usvs_dist.models.encoders import TinyAudioEncoder, TinyVideoEncoder

VIDEO_ENCODERS: dict[str, Callable[[int, int], nn.Module]] = {"tiny3d": TinyVideoEncoder}
AUDIO_ENCODERS: dict[str, Callable[[int, int], nn.Module]] = {"tiny2d": TinyAudioEncoder}


class ProjectionHead(nn.Module):
    """Linear map to the shared latent followed by BatchNorm (METHODS.md: mu(x) = BN(theta f + b))."""

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        self.norm = nn.BatchNorm1d(embed_dim)

    def forward(self, feat_BF: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, D]."""
        return self.norm(self.proj(feat_BF))


class VideoAudioModel(nn.Module):
    """Video and audio encoders with projection heads; returns unnormalised embeddings by modality."""

    def __init__(self, video: nn.Module, audio: nn.Module, embed_dim: int):
        super().__init__()
        self.video_encoder = video
        self.audio_encoder = audio
        self.video_head = ProjectionHead(video.out_features, embed_dim)
        self.audio_head = ProjectionHead(audio.out_features, embed_dim)

    def forward(self, video_BCTHW: torch.Tensor, audio_B1MF: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embeddings {"video": [B, D], "audio": [B, D]}."""
        return {
            "video": self.video_head(self.video_encoder(video_BCTHW)),
            "audio": self.audio_head(self.audio_encoder(audio_B1MF)),
        }


def check_names(cfg: ModelConfig) -> None:
    """Raise ValueError naming model.video / model.audio when not in the registries."""
    for key, name, registry in (
        ("model.video", cfg.video, VIDEO_ENCODERS),
        ("model.audio", cfg.audio, AUDIO_ENCODERS),
    ):
        if name not in registry:
            raise ValueError(f"config key {key}={name!r} is invalid: expected one of {', '.join(registry)}")


def build_model(cfg: ModelConfig, data: DataConfig) -> VideoAudioModel:
    """The pretraining model named by the config."""
    check_names(cfg)
    return VideoAudioModel(
        VIDEO_ENCODERS[cfg.video](data.channels, cfg.width),
        AUDIO_ENCODERS[cfg.audio](1, cfg.width),
        cfg.embed_dim,
    )


def encoder_state_dicts(model: VideoAudioModel) -> dict[str, dict[str, torch.Tensor]]:
    """Plain state dicts of the encoders (and heads) for downstream use, free of any wrapper."""
    return {
        name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
        for name, module in model.named_children()
    }
