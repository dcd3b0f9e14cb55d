"""The encoder registries by modality and the one builder of an encoder from a config.

Training (`PretrainModel`) and evaluation (`usvs_dist.eval.encoders`) both build encoders here,
so a checkpoint's state dicts always meet the architecture that wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from usvs_dist.config.schema import ConfigError, DataConfig, ModelConfig, RootConfig
from usvs_dist.models.audio import cnn14, tiny2d, tiny_cnn14
from usvs_dist.models.image import resnet18, tiny_resnet
from usvs_dist.models.video import r2plus1d18, tiny3d, tiny_r2plus1d

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
"""Modality -> name -> builder; the modality order is the order models build them in."""


def check_names(cfg: ModelConfig, modalities: Iterable[str] = ("video", "audio", "image")) -> None:
    """Raise ConfigError naming model.video / model.audio / model.image when not in the registries."""
    for modality in modalities:
        name, registry = getattr(cfg, modality), ENCODERS[modality]
        if name not in registry:
            raise ConfigError(
                f"config key model.{modality}={name!r} is invalid: expected one of {', '.join(registry)}"
            )


def build_encoder(cfg: RootConfig, modality: str) -> nn.Module:
    """A freshly initialised `model.{modality}` encoder for the data's channels (audio: one)."""
    check_names(cfg.model, (modality,))
    channels = 1 if modality == "audio" else cfg.data.channels
    return ENCODERS[modality][getattr(cfg.model, modality)](channels, cfg.model.width, cfg.data)
