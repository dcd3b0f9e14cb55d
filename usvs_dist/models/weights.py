"""Encoder weights from a local file (never downloaded at run time), checked key by key."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "fc_audioset.")
"""Keys of a supervised checkpoint's classifier, which the encoders drop (their fc is Identity)."""


def _state_dict_in(obj: object, role: str, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and f"{role}_encoder" in obj:  # a usvs_dist encoders.pt
        obj = obj[f"{role}_encoder"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # PANNs checkpoints
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{source}: expected a state dict of tensors (or an encoders.pt), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_encoder_weights(encoder: nn.Module, path: str, role: str) -> None:
    """Load `path` into `encoder` strictly; errors name the config key, each key and both shapes.

    Args:
        encoder: the built encoder (its classifier already replaced).
        path: a state dict, a {"state_dict": ...} checkpoint, or a usvs_dist encoders.pt.
        role: video, audio or image; names the config key `model.{role}_weights`.
    """
    source = f"model.{role}_weights={path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{source}: no such file (weights are read from local files only)")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unsafe-type errors all mean "not a weights file"
        raise ValueError(f"{source}: not a loadable torch weights file ({exc})".splitlines()[0]) from exc
    state = _state_dict_in(obj, role, source)
    expected = encoder.state_dict()
    dropped = [k for k in state if k not in expected and k.startswith(CLASSIFIER_PREFIXES)]
    unexpected = [k for k in state if k not in expected and k not in dropped]
    missing = [k for k in expected if k not in state]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, encoder {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch at " + "; ".join(mismatched[:5]))
        if any(k in m for m in mismatched[:1] for k in ("stem.0", "conv1", "blocks.0")):
            problems.append("(input channels follow data.channels: 3 for RGB weights)")
    if missing:
        problems.append(f"{len(missing)} keys missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if problems:
        raise ValueError(f"{source} does not fit model.{role}: " + " ".join(problems))
    encoder.load_state_dict({k: v for k, v in state.items() if k not in dropped})
    if dropped:
        log.info("%s: dropped %d classifier keys (%s...)", source, len(dropped), dropped[0])
