"""ZeRO stages 0, 1 and 3 (2 is the end-to-end test's) train and export whole encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.runner import TINY, train
from usvs_dist.config import load_config
from usvs_dist.losses import check_objective
from usvs_dist.models import build_model, encoder_state_dicts


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "accum"), [(0, 1), (1, 1), (3, 2)])
def test_zero_stage_trains_and_exports_whole_encoders(stage, accum, phantom_shards, tmp_path):
    run = train(
        tmp_path,
        phantom_shards,
        f"train.zero_stage={stage}",
        f"train.grad_accum_steps={accum}",
        "train.steps=2",
        "train.checkpoint_every=2",
        "train.num_workers=2",
        "optim.warmup_steps=0",
    )
    metrics = run.client.get_run(run.run_id).data.metrics
    assert metrics["global_batch"] == 4 * 2 * accum
    assert metrics["samples_seen"] == 2 * 4 * 2 * accum
    assert json.loads((run.checkpoint / "train_state.json").read_text())["step"] == 2
    ds_path = run.client.download_artifacts(run.run_id, "config/deepspeed.json", str(tmp_path))
    ds = json.loads(Path(ds_path).read_text())
    assert ds["zero_optimization"]["stage"] == stage and ds["gradient_accumulation_steps"] == accum
    assert ds["gradient_clipping"] == 1.0

    exported = torch.load(run.checkpoint / "encoders.pt")
    cfg = load_config(None, TINY)
    fresh = encoder_state_dicts(build_model(cfg, check_objective(cfg.objective).outputs))
    for module, tensors in fresh.items():
        assert {k: v.shape for k, v in exported[module].items()} == {k: v.shape for k, v in tensors.items()}
    # Trained, not the initial weights (ZeRO-3 partitions would export empty tensors otherwise).
    assert not torch.equal(exported["video_head"]["proj.weight"], fresh["video_head"]["proj.weight"])
