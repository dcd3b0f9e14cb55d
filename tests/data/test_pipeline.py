"""Loader: batch contents and shapes, equal batches per rank, bad samples, decode device."""

from __future__ import annotations

import io
import json
import random
import tarfile

import decord
import pytest
import torch

from usvs_dist.config import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.decode import resolve_decode_context, sample_frame_indices
from usvs_dist.data.pipeline import plan_epoch, train_loader
from usvs_dist.data.schema import read_index


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "loader_workers": 0, "shuffle_buffer": 4, **kw})


def test_batch_holds_every_modality_with_the_documented_shapes(phantom_shards):
    cfg = _cfg(batch_size=3, num_frames=5, frame_size=32, channels=3, n_mels=40)
    loader, _ = train_loader(cfg, phantom_shards, rank=0, world_size=1)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 5, 32, 32)
    assert batch["image"].shape == (3, 3, 32, 32)
    # 2 s at 16 kHz with hop 160: 201 frames.
    assert batch["audio"].shape == (3, 1, 40, 201)
    assert batch["labels"].shape == (3, 5) and batch["gaze"].shape == (3, 5, 2)
    assert batch["video"].dtype == torch.float32 and 0 <= batch["video"].min() <= batch["video"].max() <= 1
    assert torch.isfinite(batch["audio"]).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < len(schema.PLANES))).all()
    assert torch.equal(batch["video"][:, 0], batch["video"][:, 2])  # grey replicated to 3 channels


def test_every_rank_yields_the_same_number_of_batches(phantom_shards):
    cfg = _cfg(loader_workers=2)
    counts, keys = [], []
    for rank in range(2):
        loader, plan = train_loader(cfg, phantom_shards, rank=rank, world_size=2)
        for _epoch in range(2):
            batches = list(loader)
            counts.append(len(batches))
            keys.append({k for b in batches for k in b["__key__"]})
    index = read_index(phantom_shards)
    clips = index["splits"]["train"]["clips"]
    assert counts == [plan.batches_per_rank] * 4
    assert plan.batches_per_rank * 2 >= clips // (cfg.batch_size * 2)
    assert keys[0] != keys[2]  # the ranks read different samples


def test_plan_refuses_a_split_smaller_than_one_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        plan_epoch(7, batch_size=4, world_size=2, loader_workers=1)
    assert plan_epoch(100, 4, 2, 3).batches_per_rank % 3 == 0


def test_frame_indices_are_uniform_and_in_range():
    assert sample_frame_indices(16, 4, None) == [2, 6, 10, 14]
    rng = random.Random(0)
    for n, t in [(16, 8), (5, 8), (30, 14)]:
        idx = sample_frame_indices(n, t, rng)
        assert len(idx) == t and all(0 <= i < n for i in idx) and idx == sorted(idx)


def test_bad_samples_are_skipped_and_counted(phantom_shards, tmp_path):
    index = read_index(phantom_shards)
    shard = next(s for s in index["shards"] if s["split"] == "train")
    with tarfile.open(phantom_shards / shard["name"]) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    out = tmp_path / "train-000000.tar"
    with tarfile.open(out, "w") as dst:
        for n, (member, data) in enumerate(members):
            if n == 1:
                data = b"not an mp4" * 50  # first clip's video is corrupt
            if n == 2:
                continue  # second clip has no json
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    good = shard["clips"] - 2
    (tmp_path / schema.INDEX_NAME).write_text(
        json.dumps({**index, "shards": [{**shard, "clips": shard["clips"]}]})
    )
    loader, _ = train_loader(_cfg(batch_size=good, shuffle_buffer=1), tmp_path, rank=0, world_size=1)
    batch = next(iter(loader))
    assert len(batch["__key__"]) == good
    assert batch["bad_samples"].max().item() == 2


def _decord_has_cuda() -> bool:
    try:
        decord.nd.empty((1,), ctx=decord.gpu(0))
    except Exception:
        return False
    return True


@pytest.mark.skipif(_decord_has_cuda(), reason="this Decord is built with CUDA, so GPU decode works")
def test_gpu_decode_without_cuda_decord_is_a_clear_error():
    with pytest.raises(ValueError, match="decode_device=gpu"):
        resolve_decode_context("gpu", use_gpu=True, local_rank=0)
    assert not resolve_decode_context("auto", use_gpu=False, local_rank=0).on_gpu


def test_a_stream_of_undecodable_samples_stops_with_the_shard_and_key(phantom_shards, tmp_path):
    index = read_index(phantom_shards)
    shard = next(s for s in index["shards"] if s["split"] == "train")
    with tarfile.open(phantom_shards / shard["name"]) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(tmp_path / shard["name"], "w") as dst:
        for member, data in members:
            if member.name.endswith(".mp4"):
                data = b"\0" * 300
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    (tmp_path / schema.INDEX_NAME).write_text(json.dumps({**index, "shards": [shard]}))
    loader, _ = train_loader(_cfg(), tmp_path, rank=0, world_size=1)
    with pytest.raises(
        RuntimeError, match=rf"max_bad_fraction=0.05; last: shard .*{shard['name']}, key \w+_\d{{9}}"
    ):
        next(iter(loader))


def test_a_loader_started_at_an_epoch_draws_what_the_uninterrupted_one_draws_then(phantom_shards):
    cfg = _cfg(loader_workers=0)
    loader, _ = train_loader(cfg, phantom_shards, rank=0, world_size=2)
    epochs = [[k for b in loader for k in b["__key__"]] for _ in range(3)]
    resumed, _ = train_loader(cfg, phantom_shards, rank=0, world_size=2, start_epoch=2)
    assert [k for b in resumed for k in b["__key__"]] == epochs[2]
    assert epochs[2] != epochs[0]  # a resumed run does not replay the first epoch's draws
