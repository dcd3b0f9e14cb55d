"""Each paper-scale config (full-size encoders, 14 x 128 x 128) trains 2 steps on 2 CPU workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.runner import REPO, steps_logged, train

PAPER_RECIPES = ("usvs2020", "dual2024", "isbi2020", "awcl2022")
CPU_SMOKE = [
    "data.batch_size=2",
    "data.loader_workers=1",
    "data.decode_threads=1",
    "train.num_workers=2",
    "train.use_gpu=false",
    "train.cpus_per_worker=1",
    "train.steps=2",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "optim.warmup_steps=0",
    "train.storage_path=ray_results",
    "tracking.uri=sqlite:///mlruns.db",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_config_runs_two_steps_with_full_size_encoders(recipe, phantom_shards, tmp_path):
    config = Path(REPO, "configs", f"{recipe}.yaml")
    shards = f"data.shards={phantom_shards}"
    run = train(tmp_path, None, "--config", str(config), shards, *CPU_SMOKE, tiny=False, timeout=900)
    metrics = run.client.get_run(run.run_id).data.metrics
    assert steps_logged(run.client, run.run_id) == [1, 2]
    assert run.client.get_run(run.run_id).data.params["data.frame_size"] == "128"
    assert run.client.get_run(run.run_id).data.params["data.num_frames"] == "14"
    # The figure docs/measurements.md records: the largest training process of the two workers.
    print(f"{recipe}: peak_rss_mib={metrics['peak_rss_mib']:.0f} loss={metrics['loss']:.4f}")
    assert metrics["peak_rss_mib"] > 0
