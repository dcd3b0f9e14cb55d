"""What each model output is made of: the encoders it runs, the model inputs it consumes (views
of the batch, made by `usvs_dist.data.views.VIEWS`) and the head that maps their features to it.

Loss terms name the outputs they read (`usvs_dist.losses.TERMS`); from this table the model
builds only the encoders and heads those outputs need (`PretrainModel`) and the training step
makes only the views they consume. A new output is one entry here; its head is one of the
kinds below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from usvs_dist.config.schema import ObjectiveConfig
from usvs_dist.models.encoders import ENCODERS

HEADS = ("projection", "fusion", "classifier")


@dataclass(frozen=True)
class Output:
    """One output a loss term may read."""

    encoders: tuple[str, ...]
    """The encoder (video, audio, image) each input goes through, in input order."""
    inputs: tuple[str, ...]
    """The model inputs it consumes, one per encoder: names a view of data.views.VIEWS makes."""
    head: str = "projection"
    """projection: the encoder's projection head to the shared latent (one per encoder, shared by
    its outputs); fusion: a Fusion of the two inputs' features, its own; classifier: an MLP head
    of its own over `classes(objective)` classes."""
    encoded_with: str = ""
    """A partner projection output whose input goes through encoder and head in the same pass:
    BatchNorm sees both views, as in SimCLR. Reading one of the two computes both."""
    subclips: bool = False
    """The input holds K sub-clips per sample [B, K, ...]: each is encoded alone and the K
    features are concatenated (VCOP), so the head sees K x F features."""
    classes: Callable[[ObjectiveConfig], int] | None = None
    """A classifier's number of classes under the objective config."""


def _orders(c: ObjectiveConfig) -> int:
    return c.pretext.permutations or math.factorial(c.pretext.subclips)


def _rotations(c: ObjectiveConfig) -> int:
    return c.pretext.rotations


OUTPUTS: dict[str, Output] = {
    # Order matters: the model computes outputs in this order (BatchNorm statistics follow it).
    "video": Output(("video",), ("video",)),
    "audio": Output(("audio",), ("audio",)),
    "image": Output(("image",), ("image",)),
    "va": Output(("video", "audio"), ("video", "audio"), head="fusion"),
    "vi": Output(("video", "image"), ("video", "image"), head="fusion"),
    "image_view1": Output(("image",), ("image_view1",), encoded_with="image_view2"),
    "image_view2": Output(("image",), ("image_view2",), encoded_with="image_view1"),
    # isbi2020: one shuffled and rotated clip, its K sub-clips encoded once, both heads on them.
    "order_logits": Output(("video",), ("pretext_clips",), head="classifier", subclips=True, classes=_orders),
    "rotation_logits": Output(
        ("video",), ("pretext_clips",), head="classifier", subclips=True, classes=_rotations
    ),
}
"""Output name -> how it is computed. Shapes: [B, D] (unnormalised) for projections and fusions,
[B, classes] logits for classifiers."""


def check_outputs(outputs: Iterable[str]) -> set[str]:
    """The outputs a model computing `outputs` yields (with their encoded_with partners);
    ValueError on an unknown name."""
    outputs = set(outputs)
    unknown = outputs - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown model outputs {sorted(unknown)}; expected some of {sorted(OUTPUTS)}")
    return outputs | {OUTPUTS[o].encoded_with for o in outputs if OUTPUTS[o].encoded_with}


def model_inputs(outputs: Iterable[str]) -> set[str]:
    """The model inputs (views of the batch) that computing `outputs` consumes."""
    return {name for o in check_outputs(outputs) for name in OUTPUTS[o].inputs}


def modalities_for(outputs: Iterable[str]) -> list[str]:
    """Encoders (video, audio, image) that computing `outputs` runs."""
    used = {m for o in check_outputs(outputs) for m in OUTPUTS[o].encoders}
    return [m for m in ENCODERS if m in used]
