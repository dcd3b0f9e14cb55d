"""The loader on data sets with video-only scans, and clips whose json breaks the shard contract."""

from __future__ import annotations

import json

import pytest

from tests.data.shardkit import phantom_samples, write_shards
from usvs_dist.config import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.schema import read_index
from usvs_dist.eval.clips import load_clips


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "loader_workers": 0, **kw})


def _keys(batches) -> list[str]:
    return [k for batch in batches for k in batch["__key__"]]


def _narrated_keys(shards) -> set[str]:
    return {s["__key__"] for s in phantom_samples(shards) if schema.narrated(json.loads(s[schema.META_KEY]))}


def test_a_recipe_reading_narration_sees_only_narrated_clips_and_others_see_all(mixed_shards):
    narrated = _narrated_keys(mixed_shards)
    with_audio = EpochLoader(_cfg(), mixed_shards, rank=0, world_size=1, audio=True)
    plan = with_audio.plan(0)
    assert plan.total_clips == len(narrated) == 24
    batches = list(with_audio.epoch(0))
    assert set(_keys(batches)) == narrated and all("audio" in b for b in batches)
    assert batches[-1]["bad_samples"] == 0

    video_only = EpochLoader(_cfg(), mixed_shards, rank=0, world_size=1, audio=False)
    assert video_only.plan(0).total_clips == 36
    batches = list(video_only.epoch(0))
    assert len(set(_keys(batches))) == 36 and not any("audio" in b for b in batches)
    assert batches[0]["video"].shape[0] == 2


def test_filtered_epochs_stay_exact_over_two_ranks_and_resume(mixed_shards):
    cfg = _cfg(batch_size=2, loader_workers=0, interleave=2)
    ranks = [EpochLoader(cfg, mixed_shards, rank=r, world_size=2, audio=True) for r in range(2)]
    per_rank = [list(loader.epoch(0)) for loader in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == ranks[0].plan(0).batches_per_rank
    keys = _keys(per_rank[0]) + _keys(per_rank[1])
    assert len(keys) == len(set(keys)) and set(keys) <= _narrated_keys(mixed_shards)
    full = per_rank[1]
    positions = {0: (int(full[2]["loader_pos"]), int(full[2]["loader_batches"]))}
    assert _keys(ranks[1].epoch(0, positions)) == _keys(full[3:])


def test_a_clip_without_audio_that_claims_narration_is_a_bad_sample_not_silence(mixed_shards, tmp_path):
    samples = phantom_samples(mixed_shards)
    narrated = [s for s in samples if schema.narrated(json.loads(s[schema.META_KEY]))][:6]
    claimers = []
    for s in [s for s in samples if not schema.narrated(json.loads(s[schema.META_KEY]))][:2]:
        meta = json.loads(s[schema.META_KEY])
        meta.pop(schema.META_NARRATION)  # as a clip of a tool that wrote no such key would read
        claimers.append({**s, schema.META_KEY: json.dumps(meta).encode()})
    mixed = [narrated[0], claimers[0], *narrated[1:4], claimers[1], *narrated[4:]]
    out = write_shards(tmp_path / "claims", read_index(mixed_shards), [8], mixed)
    batches = list(EpochLoader(_cfg(batch_size=2), out, rank=0, world_size=1, audio=True).epoch(0))
    assert len(batches) == 4 and batches[-1]["bad_samples"] == 2 and batches[-1]["padded_samples"] == 2
    assert not {k[:-4] for k in _keys(batches)} & {c["__key__"] for c in claimers}


def test_evaluation_clips_with_and_without_narration(video_only_shards, mixed_shards):
    clips = load_clips(_cfg(), video_only_shards, ["train"], 100, audio=False)
    assert len(clips) == 36 and clips.audio is None and clips.vocabulary.classes[0] == "covid"
    assert len(clips.subset([0, 3])) == 2
    with pytest.raises(ValueError, match="no decodable clip with narration"):
        load_clips(_cfg(), video_only_shards, ["train"], 100, audio=True)
    narrated = load_clips(_cfg(), mixed_shards, ["train"], 100, audio=True)
    assert len(narrated) == 24 and narrated.audio.shape[0] == 24


def _set_meta(key: str, value):
    def mutate(n: int, sample: dict) -> dict:
        if n != 1:
            return sample
        meta = json.loads(sample[schema.META_KEY])
        if key == "whole":
            meta = value
        else:
            meta[key] = value(meta) if callable(value) else value
        return {**sample, schema.META_KEY: json.dumps(meta).encode()}

    return mutate


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("whole", [1, 2, 3], "json is a list, expected an object"),
        ("whole", "text", "json is a str, expected an object"),
        (schema.META_FRAMES, "16", "json 'frames' is not a positive integer"),
        (schema.META_LABELS, lambda m: m[schema.META_LABELS][:3], "json 'labels' is not a list of 16 labels"),
        (schema.META_LABELS, lambda m: [4] * 16, "label outside the vocabulary's 4 classes"),
        (schema.META_GAZE, lambda m: [[0.5, 0.5]] * 3, "json 'gaze' is not a list of 16 points"),
        (schema.META_GAZE, lambda m: [[float("nan"), 0.5]] * 16, "not [x, y] in [0, 1]"),
        (schema.META_GAZE, lambda m: [[0.5, 1.5]] * 16, "not [x, y] in [0, 1]"),
        (schema.META_NARRATION, "yes", "json 'narration' is not true or false"),
        (schema.META_SCAN, 7, "json 'scan' is not a string"),
    ],
)
def test_a_clip_json_outside_the_contract_is_a_counted_bad_sample(
    key, value, reason, video_only_shards, tmp_path, caplog
):
    index = read_index(video_only_shards)
    out = write_shards(
        tmp_path / "bad", index, [6], phantom_samples(video_only_shards), _set_meta(key, value)
    )
    batches = list(EpochLoader(_cfg(batch_size=5), out, rank=0, world_size=1, audio=False).epoch(0))
    assert len(batches) == 1 and batches[0]["bad_samples"] == 1
    assert not any(k.endswith("0001") for k in batches[0]["__key__"])
    assert reason in caplog.text and "train-000000.tar" in caplog.text


def test_a_clip_whose_json_is_not_json_is_a_counted_bad_sample(video_only_shards, tmp_path, caplog):
    def mutate(n: int, sample: dict) -> dict:
        return {**sample, schema.META_KEY: b"\xff{not json"} if n == 2 else sample

    samples = phantom_samples(video_only_shards)
    out = write_shards(tmp_path / "garbled", read_index(video_only_shards), [6], samples, mutate)
    batches = list(EpochLoader(_cfg(batch_size=5), out, rank=0, world_size=1, audio=False).epoch(0))
    assert batches[0]["bad_samples"] >= 1 and "json is not valid JSON" in caplog.text


def test_a_bad_sample_from_a_pipe_url_is_logged_without_the_command(video_only_shards, tmp_path, caplog):
    samples = phantom_samples(video_only_shards)
    out = write_shards(
        tmp_path / "piped", read_index(video_only_shards), [6], samples, _set_meta("whole", [1])
    )
    # The command holds a token (as `aws s3 cp` with a presigned URL would); the shell ignores it.
    url = f"pipe:cat {out / 'train-000000.tar'} # X-Amz-Signature=SECRETTOKEN"
    cfg = _cfg(batch_size=5, shard_urls=[url])
    batches = list(EpochLoader(cfg, out, rank=0, world_size=1, audio=False).epoch(0))
    assert batches[0]["bad_samples"] == 1 and "json is a list" in caplog.text
    assert "SECRETTOKEN" not in caplog.text and "pipe:" in caplog.text
