"""The training entry end to end: 2 Ray workers, DeepSpeed ZeRO-2 on CPU, MLflow on SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from usvs_dist.config import flatten, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_entry_runs_two_ray_workers_and_logs_to_mlflow(phantom_shards, tmp_path):
    overrides = [
        f"data.shards={phantom_shards}",
        "data.batch_size=4",
        "data.loader_workers=1",
        "train.steps=6",
        "train.checkpoint_every=3",
        "train.num_workers=2",
        "model.width=4",
        "model.embed_dim=16",
        "train.run_name=e2e-test",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "usvs_dist.train", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_id = re.search(r"MLflow run id: (\w+)", proc.stdout).group(1)
    checkpoint = Path(re.search(r"checkpoint: (\S+)", proc.stdout).group(1))
    assert checkpoint.is_dir() and checkpoint.is_relative_to(tmp_path / "ray_results" / "e2e-test")
    assert (checkpoint / "deepspeed").is_dir() and (checkpoint / "train_state.json").is_file()
    encoders = torch.load(checkpoint / "encoders.pt")
    assert {"video_encoder", "audio_encoder", "video_head", "audio_head"} <= set(encoders)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    expected = {k: str(v) for k, v in flatten(load_config(None, overrides)).items()}
    assert run.data.params == expected
    losses = client.get_metric_history(run_id, "loss")
    assert len(losses) >= 5 and [m.step for m in losses] == list(range(1, 7))
    assert all(m.value > 0 for m in losses)
    assert len(client.get_metric_history(run_id, "clips_per_s")) == 6
    assert run.data.metrics["global_batch"] == 8
    artifacts = {a.path for a in client.list_artifacts(run_id, "config")}
    assert artifacts == {"config/resolved.yaml", "config/deepspeed.json"}
    assert [a.path for a in client.list_artifacts(run_id, "encoders")] == ["encoders/encoders.pt"]
