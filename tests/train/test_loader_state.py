"""The loader's state travels in every rank's checkpoint file and continues the epoch where it was."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
import torch

from usvs_dist.config.schema import DataConfig
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.train.checkpoint import load_rank_state, save_rank_state


def _cfg(**kw) -> DataConfig:
    return DataConfig(batch_size=2, loader_workers=2, interleave=2, **kw)


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def test_the_state_round_trips_through_the_rank_file_and_continues_after_the_last_batch(
    phantom_shards, tmp_path
):
    loader = EpochLoader(_cfg(), phantom_shards, rank=1, world_size=2)
    per_epoch = loader.plan(0).batches_per_rank
    run = list(itertools.islice(loader.batches(), per_epoch + 2))  # into the second epoch
    assert loader.current_epoch == 1
    # A run that stopped after 3 batches of epoch 0, saved, and resumed in a new loader.
    first = EpochLoader(_cfg(), phantom_shards, rank=1, world_size=2)
    head = list(itertools.islice(first.batches(), 3))
    state = first.state_dict()
    json.dumps(state)  # plain data: the checkpoint keeps it as is
    save_rank_state(tmp_path, rank=1, loader_state=state)

    resumed = EpochLoader(_cfg(), phantom_shards, rank=1, world_size=2)
    resumed.load_state_dict(load_rank_state(tmp_path, rank=1))
    rest = list(itertools.islice(resumed.batches(), per_epoch + 2 - 3))
    assert _keys(head) + _keys(rest) == _keys(run)
    assert resumed.current_epoch == 1 and resumed.state_dict()["epoch"] == 1
    assert resumed.frames_ratio() >= 1.0


def test_another_layout_restarts_the_epoch_and_keeps_the_sample_counts(phantom_shards, tmp_path, caplog):
    saved = {"epoch": 0, "world_size": 2, "workers": 2, "positions": {"0": [4, 1]}, "bad": 2, "padded": 3}
    loader = EpochLoader(_cfg(), phantom_shards, rank=0, world_size=4)
    with caplog.at_level(logging.WARNING):
        loader.load_state_dict(saved)
    assert "the epoch restarts from its beginning" in caplog.text
    assert loader.state_dict()["positions"] == {} and loader.sample_counts() == (2, 3)
    # A rank the saved run did not have gets only the epoch the other ranks are in.
    fresh = EpochLoader(_cfg(), phantom_shards, rank=3, world_size=4)
    fresh.load_state_dict({"epoch": 1})
    assert fresh.current_epoch == 1 and fresh.sample_counts() == (0, 0)
    assert load_rank_state(tmp_path, rank=3) == {}


def test_a_resume_after_an_odd_batch_keeps_the_workers_round_robin(phantom_shards):
    loader = EpochLoader(_cfg(), phantom_shards, rank=0, world_size=1)
    per_epoch = loader.plan(0).batches_per_rank
    assert per_epoch >= 6  # 3 or more batches per worker, so the workers' turns matter
    run = list(itertools.islice(loader.batches(), per_epoch))
    first = EpochLoader(_cfg(), phantom_shards, rank=0, world_size=1)
    head = list(itertools.islice(first.batches(), 3))  # worker 1's turn is next
    resumed = EpochLoader(_cfg(), phantom_shards, rank=0, world_size=1)
    resumed.load_state_dict(first.state_dict())
    rest = list(itertools.islice(resumed.batches(), per_epoch - 3))
    assert [int(b["worker"]) for b in rest][:2] == [1, 0]
    assert _keys(head) + _keys(rest) == _keys(run)


def test_a_stream_resumed_after_its_last_full_batch_pads_with_its_first():
    from usvs_dist.data.pipeline import _batches

    class Counts:
        bad = seen = frames_decoded = frames_used = 0

    first = {"video": torch.zeros(2, 1)}
    out = list(_batches(iter(()), Counts(), 2, 3, (7, 2), 0, lambda: first))
    assert len(out) == 1 and out[0]["loader_pos"] == 7 and out[0]["loader_batches"] == 3
    assert out[0]["padded_samples"] == 2 and torch.equal(out[0]["video"], first["video"])
    with pytest.raises(RuntimeError, match="no full batch"):
        list(_batches(iter(()), Counts(), 2, 3, (0, 0), 0, lambda: first))


def test_a_changed_read_plan_restarts_the_epoch(phantom_shards, caplog):
    loader = EpochLoader(_cfg(), phantom_shards, rank=0, world_size=1)
    list(itertools.islice(loader.batches(), 2))
    other = EpochLoader(_cfg(seed=5), phantom_shards, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(loader.state_dict())
    assert "another read plan" in caplog.text and other.state_dict()["positions"] == {}
