"""`load_encoder(path_or_run, modality)`: one trained encoder and its input's preprocessing.

Accepts an export folder (`python -m usvs_dist.export`), a training checkpoint folder (or its
encoders.pt), or an MLflow run: `runs:/RUN_ID` or a plain run id, in the store of
`tracking_uri` (MLFLOW_TRACKING_URI wins, as everywhere in usvs_dist).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from usvs_dist.config import from_dict
from usvs_dist.data.preprocessing import describe
from usvs_dist.eval.encoders import ENCODERS_FILE
from usvs_dist.export.write import FORMAT, MANIFEST, PREPROCESSING
from usvs_dist.models import build_encoder
from usvs_dist.models.torchvision_layout import TORCHVISION_ENCODERS
from usvs_dist.trained import DEFAULT_TRACKING_URI, Trained, from_run, load_trained


def _from_export(folder: Path, modality: str) -> tuple[nn.Module, dict[str, Any]]:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    entries = manifest["encoders"]
    if modality not in entries:
        raise ValueError(f"{folder}: no {modality} encoder (it holds: {', '.join(entries)})")
    entry = entries[modality]
    tree = manifest["architecture"]
    state = load_file(folder / entry["weights"])
    if entry["layout"] == "torchvision":
        # torchvision's key names are ours; its stem takes RGB and its zero fc is untrained.
        tree = {**tree, "data": {**tree["data"], "channels": 3}}
        classifier = [k for k in state if k.startswith("fc.")]
        if entry["name"] not in TORCHVISION_ENCODERS or not classifier:
            raise ValueError(
                f"{folder / MANIFEST}: {modality} encoder {entry['name']!r} in the torchvision layout "
                "should be a torchvision architecture with its fc.* tensors (a folder not written by "
                "`python -m usvs_dist.export --format torchvision`?)"
            )
        state = {k: v for k, v in state.items() if k not in classifier}
    encoder = build_encoder(from_dict(tree), modality)
    encoder.load_state_dict(state, strict=True)
    preprocessing = json.loads((folder / PREPROCESSING).read_text())[modality]
    return encoder.eval(), preprocessing


def _from_trained(trained: Trained, modality: str) -> tuple[nn.Module, dict[str, Any]]:
    enc = trained.encoders
    if modality not in enc.encoders:
        raise ValueError(f"{enc.source}: no {modality} encoder (it has: {', '.join(enc.encoders)})")
    return enc.encoders[modality].eval(), describe(enc.cfg, modality)


def load_encoder(
    path_or_run: str | Path, modality: str = "video", tracking_uri: str = DEFAULT_TRACKING_URI
) -> tuple[nn.Module, dict[str, Any]]:
    """(encoder in eval mode, its preprocessing dict) from an export, a checkpoint or an MLflow run.

    Args:
        path_or_run: an export folder, a checkpoint folder or encoders.pt, `runs:/RUN_ID`, or a run id.
        modality: video, audio or image.
        tracking_uri: the MLflow store of a run id (MLFLOW_TRACKING_URI wins).

    Raises:
        FileNotFoundError: neither an existing path nor a run the store has.
        ValueError: the source has no encoder of `modality`.
    """
    text = str(path_or_run)
    path = Path(text).expanduser()
    if not text.startswith("runs:/") and path.exists():
        if (path / MANIFEST).is_file():
            return _from_export(path, modality)
        if path.is_file() or (path / ENCODERS_FILE).is_file():
            with tempfile.TemporaryDirectory() as tmp:
                return _from_trained(load_trained(checkpoint=path, dest=Path(tmp)), modality)
        raise FileNotFoundError(
            f"{path}: neither an export ({MANIFEST}) nor a training checkpoint ({ENCODERS_FILE})"
        )
    if not text.startswith("runs:/") and ("/" in text or text.startswith(".")):
        raise FileNotFoundError(f"{path}: no such file or folder")
    run_id = text.removeprefix("runs:/").strip("/").split("/")[0]
    if not run_id:
        raise FileNotFoundError(f"{text!r}: no run id in it")
    with tempfile.TemporaryDirectory() as tmp:
        return _from_trained(from_run(run_id, tracking_uri, Path(tmp)), modality)
