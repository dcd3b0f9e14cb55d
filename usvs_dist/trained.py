"""A run's trained encoders from where training leaves them: an MLflow run or a checkpoint folder.

Shared by `python -m usvs_dist.evaluate`, `python -m usvs_dist.export` and `load_encoder`. An MLflow
run holds the resolved config (config/resolved.yaml) and encoders/encoders.pt; a checkpoint
folder holds encoders.pt, config.yaml and run.json (which MLflow run wrote it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from usvs_dist.config import TrackingConfig, load_config
from usvs_dist.eval.encoders import RUN_FILE, Encoders, build_encoders, from_checkpoint

DEFAULT_TRACKING_URI = TrackingConfig.uri
"""The tracking URI of `--run` when none is given (tracking.uri's default)."""
RUN_ARTIFACTS = ["config/resolved.yaml", "encoders/encoders.pt"]
"""What a pretraining run logs that its encoders are rebuilt from."""


@dataclass
class Trained:
    """Encoders and the MLflow run they came from (uri and run id None when unknown)."""

    encoders: Encoders
    tracking_uri: str | None
    run_id: str | None


def from_run(run_id: str, tracking_uri: str, dest: Path) -> Trained:
    """Encoders of MLflow run `run_id` (artifacts downloaded into `dest`); MLFLOW_TRACKING_URI wins."""
    from usvs_dist.tracking import download_run_files, resolve_uri

    uri = resolve_uri(tracking_uri)
    config, encoders = download_run_files(uri, run_id, RUN_ARTIFACTS, dest)
    state = torch.load(encoders, map_location="cpu", weights_only=True)
    return Trained(build_encoders(load_config(config), state, f"MLflow run {run_id}"), uri, run_id)


def load_trained(
    run: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    config: str | Path | None = None,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    dest: Path,
) -> Trained:
    """Encoders of `--run RUN_ID` or `--checkpoint PATH` (a folder, or encoders.pt with `config`).

    Raises:
        FileNotFoundError: the run lacks the artifacts, or the checkpoint its files.
    """
    if run:
        return from_run(run, tracking_uri, dest)
    if checkpoint is None:
        raise ValueError("give a run id or a checkpoint")
    enc = from_checkpoint(checkpoint, config)
    run_file = Path(enc.source).parent / RUN_FILE
    if run_file.is_file():
        written = json.loads(run_file.read_text())
        return Trained(enc, written["tracking_uri"], written["mlflow_run_id"])
    return Trained(enc, None, None)
