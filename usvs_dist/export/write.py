"""An export folder of a run's encoders, written whole or not at all.

Layout of the folder:
- `{modality}_encoder.safetensors` (and `{modality}_head.safetensors` when the recipe trained a
  projection head): state dicts, `native` (our modules' keys) or `torchvision` layout.
- `preprocessing.json`: {modality: usvs_dist.data.preprocessing.describe(...)}.
- `export.json`: format tag, each encoder's name, files, layout and feature size, and the few
  architecture settings that rebuild the modules (no path, no identifier).
- `model_card.md`.
It is built in a temporary sibling folder and renamed into place, so a failed export leaves
nothing half written under the target name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from usvs_dist.config import RootConfig
from usvs_dist.data.preprocessing import clip_timing, describe
from usvs_dist.eval.encoders import Encoders
from usvs_dist.export.card import model_card
from usvs_dist.models.torchvision_layout import torchvision_state_dict

FORMAT = "usvs_dist.export/1"
MANIFEST = "export.json"
PREPROCESSING = "preprocessing.json"
CARD = "model_card.md"
Layout = Literal["native", "torchvision"]
ARCHITECTURE_KEYS = {
    "model": ("video", "audio", "image", "width", "embed_dim"),
    "data": (
        "channels",
        "num_frames",
        "frame_size",
        "sample_rate",
        "n_fft",
        "hop_length",
        "n_mels",
        "f_min",
        "f_max",
    ),
}
"""Config keys an encoder's builder reads (models.build_encoder): enough to rebuild the modules."""


def architecture(cfg: RootConfig) -> dict[str, dict[str, Any]]:
    """The ARCHITECTURE_KEYS of `cfg`, as a partial config tree."""
    return {
        section: {k: getattr(getattr(cfg, section), k) for k in keys}
        for section, keys in ARCHITECTURE_KEYS.items()
    }


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views that share storage; each tensor gets its own contiguous copy.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def write_export(
    enc: Encoders,
    out: str | Path,
    layout: Layout = "native",
    modalities: list[str] | None = None,
    step: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `enc`'s encoders (those of `modalities`, default all) into the folder `out`.

    Raises:
        ValueError: a modality the run has no encoder for; layout torchvision for an encoder
            torchvision does not build (names the encoder).
        FileExistsError: `out` exists and is not empty, without `overwrite`.
    """
    cfg, out = enc.cfg, Path(out)
    modalities = modalities or list(enc.encoders)
    missing = [m for m in modalities if m not in enc.encoders]
    if missing:
        raise ValueError(f"no {', '.join(missing)} encoder in this run (it has: {', '.join(enc.encoders)})")
    states = {
        m: torchvision_state_dict(getattr(cfg.model, m), enc.encoders[m], m)
        if layout == "torchvision"
        else enc.encoders[m].state_dict()
        for m in modalities
    }
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
    timing = clip_timing(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries, prep = {}, {}
        for m in modalities:
            entry = {
                "name": getattr(cfg.model, m),
                "layout": layout,
                "weights": f"{m}_encoder.safetensors",
                "head": None,
                "out_features": int(enc.encoders[m].out_features),
            }
            save_file(
                _tensors(states[m]), tmp / entry["weights"], metadata={"format": FORMAT, "layout": layout}
            )
            if m in enc.heads:
                entry["head"] = f"{m}_head.safetensors"
                save_file(
                    _tensors(enc.heads[m].state_dict()), tmp / entry["head"], metadata={"format": FORMAT}
                )
            prep[m] = describe(cfg, m, timing)
            if layout == "torchvision" and m != "audio":
                # The file's stem takes RGB: grey is repeated into R, G and B (exact; see card).
                prep[m] = _as_rgb(prep[m])
            entries[m] = entry
        manifest = {"format": FORMAT, "encoders": entries, "architecture": architecture(cfg)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / PREPROCESSING).write_text(json.dumps(prep, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(cfg, entries, step))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "export")
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _as_rgb(prep: dict[str, Any]) -> dict[str, Any]:
    shape = list(prep["shape"])
    shape[1] = 3
    return {**prep, "shape": shape, "channels": 3, "colour": "grey repeated into 3 identical RGB channels"}
