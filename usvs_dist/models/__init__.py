"""Plain nn.Modules (encoders, heads) and the name -> builder registries; no parallelism here.

- `encoders`: the encoder registries by modality and the one encoder builder.
- `outputs`: what each model output a loss term may read is made of (encoders, inputs, head).
- `pretrain`: the pretraining model assembled from the outputs a recipe reads, e.g.
  {"video", "audio"} builds two encoders with projection heads, "va" adds dual2024's fusion,
  "order_logits" the order-prediction head.
"""

from usvs_dist.models.encoders import (
    AUDIO_ENCODERS,
    ENCODERS,
    IMAGE_ENCODERS,
    VIDEO_ENCODERS,
    Builder,
    build_encoder,
    check_names,
)
from usvs_dist.models.outputs import OUTPUTS, Output, check_outputs, modalities_for, model_inputs
from usvs_dist.models.pretrain import PretrainModel, build_model, encoder_state_dicts

__all__ = [
    "AUDIO_ENCODERS",
    "ENCODERS",
    "IMAGE_ENCODERS",
    "OUTPUTS",
    "VIDEO_ENCODERS",
    "Builder",
    "Output",
    "PretrainModel",
    "build_encoder",
    "build_model",
    "check_names",
    "check_outputs",
    "encoder_state_dicts",
    "model_inputs",
    "modalities_for",
]
