"""The training entry end to end: Ray workers, DeepSpeed ZeRO on CPU, MLflow on SQLite."""

from __future__ import annotations

import re

import mlflow.pytorch
import pytest
import torch

from tests.train.runner import TINY, steps_logged, train
from usvs_dist.config import flatten, load_config


@pytest.mark.slow
def test_train_entry_runs_two_ray_workers_and_logs_to_mlflow(phantom_shards, tmp_path, monkeypatch):
    overrides = [
        "train.steps=6",
        "train.checkpoint_every=3",
        "train.num_workers=2",
        "train.run_name=e2e-test",
        "tracking.register_as=e2e-video",
    ]
    run = train(tmp_path, phantom_shards, *overrides)

    assert run.checkpoint.is_dir() and run.checkpoint.is_relative_to(tmp_path / "ray_results" / "e2e-test")
    assert (run.checkpoint / "deepspeed").is_dir() and (run.checkpoint / "train_state.json").is_file()
    assert sorted(p.name for p in (run.checkpoint / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    loader_state = torch.load(run.checkpoint / "rng" / "rank_1.pt", weights_only=False)["loader"]
    assert loader_state["world_size"] == 2 and loader_state["positions"]  # where rank 1's loader stopped
    encoders = torch.load(run.checkpoint / "encoders.pt")
    assert {"video_encoder", "audio_encoder", "video_head", "audio_head"} <= set(encoders)

    client, run_id = run.client, run.run_id
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED"
    cfg = load_config(None, [f"data.shards={phantom_shards}", *TINY, *overrides])
    assert info.data.params == {k: str(v) for k, v in flatten(cfg).items()}
    assert steps_logged(client, run_id) == list(range(1, 7))
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "loss"))
    assert len(client.get_metric_history(run_id, "clips_per_s")) == 6
    assert {
        "bad_samples",
        "padded_samples",
        "decode_frames_ratio",
        "loader_epoch",
        "same_scan_pair_share",
    } <= set(info.data.metrics)
    assert info.data.metrics["global_batch"] == 8 and info.data.metrics["samples_seen"] == 48
    lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)]
    assert lrs[0] < lrs[4] and lrs[5] < lrs[4]  # warmup, then cosine decay
    assert any(k.startswith("system/") for k in info.data.metrics)
    assert {"recipe", "shard_index_sha256", "git_commit"} <= set(info.data.tags)
    artifacts = {a.path for a in client.list_artifacts(run_id, "config")}
    assert artifacts == {"config/resolved.yaml", "config/deepspeed.json"}
    assert [a.path for a in client.list_artifacts(run_id, "encoders")] == ["encoders/encoders.pt"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]
    # The video encoder as an MLflow model of the run, registered under tracking.register_as.
    (version,) = client.search_model_versions("name='e2e-video'")
    assert version.run_id == run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    model = mlflow.pytorch.load_model(f"models:/e2e-video/{version.version}")
    clips = torch.rand(2, 1, cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size)
    assert model(clips).shape == (2, model.out_features)

    # Rank 0's console progress (train.console, every train.log_every=1 steps): one plain line a
    # step in the job's output, however Ray prefixes it (the pattern ends at a newline: no "\r"
    # redraws). The output is stdout + stderr, and Ray echoes worker lines on both.
    progress = re.findall(
        r"pid=(\d+)\).* step (\d)/6 loss \S+ clips/s \S+ lr \d\.\de-\d+ elapsed \d+:\d\d:\d\d eta (\S+)$",
        run.output,
        re.M,
    )
    assert list(dict.fromkeys(int(step) for _, step, _ in progress)) == [1, 2, 3, 4, 5, 6]
    assert len({pid for pid, _, _ in progress}) == 1  # rank 0 only
    assert progress[-1][2] == "0:00:00"
