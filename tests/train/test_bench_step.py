"""The step benchmark times the batch the loader really yields (shapes), with the same loss."""

from __future__ import annotations

from usvs_dist.bench.step import plain_step_times, synthetic_batch
from usvs_dist.config import load_config
from usvs_dist.data.pipeline import EpochLoader


def test_synthetic_batch_has_the_loaders_shapes(phantom_shards):
    cfg = load_config(None, ["data.batch_size=3", "data.loader_workers=0", "data.num_frames=5"])
    real = next(iter(EpochLoader(cfg.data, phantom_shards, rank=0, world_size=1).epoch(0)))
    fake = synthetic_batch(cfg)
    assert {k: v.shape for k, v in fake.items()} == {k: real[k].shape for k in fake}


def test_plain_loop_times_each_step():
    cfg = load_config(None, ["model.width=2", "model.embed_dim=8", "data.batch_size=2", "data.num_frames=2"])
    times = plain_step_times(cfg, steps=3, warmup=1)
    assert len(times) == 3 and all(t > 0 for t in times)
