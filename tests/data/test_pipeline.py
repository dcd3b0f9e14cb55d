"""Loader: shapes, exact per-rank epochs, resume, bad samples, shard URLs, decode device; the
loader tests run with each decoder (`decoder`, tests/conftest.py)."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from collections import Counter

import decord
import fsspec
import numpy as np
import pytest
import torch

from tests.data.shardkit import phantom_samples, write_shards
from usvs_dist.config import AugmentConfig, ConfigError, DataConfig
from usvs_dist.data import epoch as epoch_mod
from usvs_dist.data import schema
from usvs_dist.data.backends import decord_has_cuda, resolve_decoder
from usvs_dist.data.decode import read_wave, sample_frame_indices
from usvs_dist.data.epoch import plan_epoch, read_order, read_stream
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.schema import read_index
from usvs_dist.data.shards import Shard, expand_urls, shard_name


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "loader_workers": 0, **kw})


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]


@pytest.fixture(scope="module")
def uneven(phantom_shards, tmp_path_factory):
    """Three uneven shards (9, 5 and 3 clips) of real phantom clips."""
    out = tmp_path_factory.mktemp("uneven")
    return write_shards(out, read_index(phantom_shards), [9, 5, 3], phantom_samples(phantom_shards))


def test_batch_holds_every_modality_with_the_documented_shapes(phantom_shards, decoder):
    cfg = _cfg(decoder=decoder, batch_size=3, num_frames=5, frame_size=32, channels=3, n_mels=40)
    batch = next(iter(EpochLoader(cfg, phantom_shards, rank=0, world_size=1).epoch(0)))
    assert batch["video"].shape == (3, 3, 5, 32, 32)
    assert batch["image"].shape == (3, 3, 32, 32)
    # 2 s at 16 kHz with hop 160: 201 frames.
    assert batch["audio"].shape == (3, 1, 40, 201)
    assert batch["labels"].shape == (3, 5) and batch["gaze"].shape == (3, 5, 2)
    assert batch["video"].dtype == torch.float32 and 0 <= batch["video"].min() <= batch["video"].max() <= 1
    assert torch.isfinite(batch["audio"]).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < len(schema.PLANES))).all()
    assert torch.equal(batch["video"][:, 0], batch["video"][:, 2])  # grey replicated to 3 channels
    assert batch["loader_batches"] == 1 and batch["worker"] == 0 and batch["bad_samples"] == 0
    # 16 stored frames, 5 + 1 used: the decoder decodes from frame 0 to the last one wanted.
    assert batch["frames_used"] <= batch["frames_decoded"] <= 16 * 3


def test_plan_splits_uneven_shards_evenly_over_ranks_and_workers():
    plan = plan_epoch([9, 5, 3], epoch=0, seed=0, world_size=2, workers=2, batch_size=2)
    assert len(plan.streams) == 4
    clips = [sum(u.clips for u in s) for s in plan.streams]
    assert min(clips) >= plan.batches_per_stream * 2 and plan.batches_per_rank == 2 * plan.batches_per_stream
    # Every (shard, sample ordinal) belongs to exactly one stream.
    owned = Counter(
        (u.shard, i)
        for s in plan.streams
        for u in s
        for i in range(9)
        if i % u.parts == u.part and i < [9, 5, 3][u.shard]
    )
    assert set(owned.values()) == {1} and len(owned) == 17
    assert plan.unused_clips == 17 - 4 * plan.batches_per_stream * 2
    # Another epoch shuffles differently; the same epoch is the same everywhere.
    assert plan_epoch([9, 5, 3], 0, 0, 2, 2, 2) == plan
    with pytest.raises(ValueError, match="less than data.batch_size=8"):
        plan_epoch([9, 5, 3], 0, 0, 2, 2, 8)


@pytest.mark.parametrize("resample", [False, True])
def test_three_uneven_shards_two_ranks_two_workers_same_batches_no_repeats(uneven, resample, decoder):
    cfg = _cfg(decoder=decoder, batch_size=2, loader_workers=2, resample=resample)
    per_rank, keys = [], []
    for rank in range(2):
        loader = EpochLoader(cfg, uneven, rank=rank, world_size=2)
        batches = list(loader.epoch(0))
        per_rank.append(len(batches))
        keys.extend(k for b in batches for k in b["__key__"])
        assert {int(b["worker"]) for b in batches} == {0, 1}
    assert per_rank[0] == per_rank[1] == loader.plan(0).batches_per_rank > 0
    if not resample:
        assert len(keys) == len(set(keys))  # no clip twice in an epoch, across ranks and workers


def test_raw_streams_of_an_epoch_cover_the_split_once(tmp_path):
    # Dummy samples (no decode): every clip of the split is in exactly one stream's read order.
    sizes = [7, 4, 2]
    shards = []
    for k, size in enumerate(sizes):
        path = tmp_path / f"train-{k:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(size):
                info = tarfile.TarInfo(f"s{k}_{i:03d}.json")
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
        shards.append(Shard(str(path), path.name, size))
    plan = plan_epoch(sizes, 3, 0, world_size=2, workers=2, batch_size=1)
    seen = []
    for s, units in enumerate(plan.streams):
        order = read_order(units, 2, f"t-{s}")
        seen += [sample["__key__"] for _, sample in read_stream(shards, units, order, 0, lambda e: False)]
    assert sorted(seen) == sorted(f"s{k}_{i:03d}" for k, n in enumerate(sizes) for i in range(n))


def test_a_resumed_epoch_continues_each_worker_without_reopening_finished_shards(
    uneven, monkeypatch, decoder
):
    cfg = _cfg(decoder=decoder, batch_size=2, loader_workers=0, interleave=1)
    loader = EpochLoader(cfg, uneven, rank=0, world_size=1)
    full = list(loader.epoch(0))

    def urls(batches) -> set[str]:
        return {u for b in batches for u in b["__url__"]}

    # The first cut after which some shard is never read again.
    cut = next(c for c in range(1, len(full)) if urls(full[:c]) - urls(full[c:]))
    finished = urls(full[:cut]) - urls(full[cut:])
    positions = {0: (int(full[cut - 1]["loader_pos"]), int(full[cut - 1]["loader_batches"]))}

    opened = []
    real_open = epoch_mod.open_shard
    monkeypatch.setattr(epoch_mod, "open_shard", lambda url: opened.append(url) or real_open(url))
    rest = list(loader.epoch(0, positions))
    assert _keys(full[cut:]) == _keys(rest)
    assert opened and not finished & set(opened)  # finished shards are not opened again


def test_resume_with_two_workers_yields_exactly_the_remaining_batches(uneven, decoder):
    cfg = _cfg(decoder=decoder, batch_size=2, loader_workers=2)
    loader = EpochLoader(cfg, uneven, rank=0, world_size=1)
    full = list(loader.epoch(0))
    positions = {}
    for batch in full[:3]:
        positions[int(batch["worker"])] = (int(batch["loader_pos"]), int(batch["loader_batches"]))
    rest = list(loader.epoch(0, positions))
    assert len(rest) == len(full) - 3
    assert sorted(_keys(full[3:])) == sorted(_keys(rest))


def test_augmentation_is_deterministic_per_clip_and_epoch_and_off_for_plain_resize(phantom_shards, decoder):
    loader = EpochLoader(_cfg(decoder=decoder, batch_size=2), phantom_shards, rank=0, world_size=1)
    a, b = next(iter(loader.epoch(0))), next(iter(loader.epoch(0)))
    assert torch.equal(a["video"], b["video"])
    plain = EpochLoader(
        _cfg(decoder=decoder, batch_size=2, augment=AugmentConfig(enabled=False)), phantom_shards, 0, 1
    )
    c = next(iter(plain.epoch(0)))
    assert c["__key__"] == a["__key__"] and not torch.equal(a["video"], c["video"])


def _corrupt(kind: str):
    def mutate(n: int, sample: dict) -> dict | None:
        if n != 1:
            return sample
        if kind == "corrupt_mp4":
            return {**sample, "mp4": b"not an mp4" * 50}
        if kind == "missing_key":
            return {k: v for k, v in sample.items() if k != "json"}
        if kind == "other_size":
            return {**sample, "mp4": _other_size(sample["mp4"])}
        if kind == "short_audio":
            meta = json.loads(sample["json"])
            return sample if meta is None else {**sample, "mp4": _strip_audio_tail(sample["mp4"])}
        return None  # "missing_sample": the tar holds one clip fewer than index.json says

    return mutate


def _other_size(mp4: bytes) -> bytes:
    """A clip of the same length and narration whose frames are 96 x 96 (the shards store 64 x 64)."""
    from sharding.media import encode_mp4

    frames = len(decord.VideoReader(io.BytesIO(mp4)))
    return encode_mp4(np.full((frames, 96, 96), 90, np.uint8), 8.0, read_wave(mp4, 16000), 16000)


def _strip_audio_tail(mp4: bytes) -> bytes:
    """The same clip with its narration cut to half its length (video unchanged)."""
    import av

    src = av.open(io.BytesIO(mp4))
    out_buf = io.BytesIO()
    dst = av.open(out_buf, "w", format="mp4")
    vin, ain = src.streams.video[0], src.streams.audio[0]
    vout = dst.add_stream_from_template(vin)
    aout = dst.add_stream_from_template(ain)
    half = float(src.duration / 1e6) / 2
    for packet in src.demux(vin, ain):
        if packet.dts is None:
            continue
        if packet.stream is ain:
            if float(packet.pts * packet.time_base) > half:
                continue
            packet.stream = aout
        else:
            packet.stream = vout
        dst.mux(packet)
    dst.close()
    return out_buf.getvalue()


@pytest.mark.parametrize("kind", ["corrupt_mp4", "missing_key", "short_audio", "other_size"])
def test_each_kind_of_bad_sample_is_skipped_and_counted(kind, phantom_shards, tmp_path, caplog, decoder):
    samples = phantom_samples(phantom_shards)
    out = write_shards(tmp_path / kind, read_index(phantom_shards), [6], samples, _corrupt(kind))
    loader = EpochLoader(_cfg(decoder=decoder, batch_size=5), out, rank=0, world_size=1)
    batches = list(loader.epoch(0))
    assert len(batches) == 1 and len(batches[0]["__key__"]) == 5
    assert batches[0]["bad_samples"] == 1
    assert all(not k.endswith("0001") for k in batches[0]["__key__"])
    reason = {"missing_key": "missing key 'json'", "short_audio": "audio has"}
    reason["other_size"] = "frames are 96x96, this stream's earlier clips 64x64"
    assert reason.get(kind, "skipped sample") in caplog.text


def test_a_shard_shorter_than_its_index_count_is_counted(phantom_shards, tmp_path, decoder):
    samples = phantom_samples(phantom_shards)
    out = write_shards(tmp_path, read_index(phantom_shards), [6], samples, _corrupt("missing_sample"))
    batches = list(EpochLoader(_cfg(decoder=decoder, batch_size=3), out, rank=0, world_size=1).epoch(0))
    assert len(batches) == 2 and batches[-1]["bad_samples"] == 1 and batches[-1]["padded_samples"] == 3


def test_a_short_stream_pads_with_its_last_batch_and_counts_it(phantom_shards, tmp_path, decoder):
    samples = phantom_samples(phantom_shards)
    out = write_shards(tmp_path, read_index(phantom_shards), [8], samples, _corrupt("corrupt_mp4"))
    batches = list(EpochLoader(_cfg(decoder=decoder, batch_size=4), out, rank=0, world_size=1).epoch(0))
    assert len(batches) == 2 and batches[1]["padded_samples"] == 4
    assert batches[1]["__key__"] == batches[0]["__key__"]


def test_a_truncated_tar_is_counted_not_fatal(phantom_shards, tmp_path, decoder):
    samples = phantom_samples(phantom_shards)
    out = write_shards(tmp_path, read_index(phantom_shards), [6, 6], samples)
    data = (out / "train-000001.tar").read_bytes()
    (out / "train-000001.tar").write_bytes(data[: len(data) // 2])
    batches = list(EpochLoader(_cfg(decoder=decoder, batch_size=3), out, rank=0, world_size=1).epoch(0))
    assert len(batches) == 4 and batches[-1]["bad_samples"] >= 3


def test_a_stream_of_undecodable_samples_stops_with_the_shard_and_key(phantom_shards, tmp_path, decoder):
    samples = phantom_samples(phantom_shards)
    out = write_shards(
        tmp_path, read_index(phantom_shards), [60], samples, lambda n, s: {**s, "mp4": b"\0" * 300}
    )
    with pytest.raises(
        RuntimeError, match=r"max_bad_fraction=0.05; last: shard .*train-000000.tar, key \w+_\d{9}"
    ):
        next(iter(EpochLoader(_cfg(decoder=decoder), out, rank=0, world_size=1).epoch(0)))


def test_shard_urls_brace_ranges_globs_pipes_and_fsspec(uneven):
    names = ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [shard_name(u) for u in expand_urls([f"{uneven}/train-{{000000..000002}}.tar"])] == names
    assert [shard_name(u) for u in expand_urls([f"{uneven}/train-*.tar"])] == names
    assert shard_name(f"pipe:cat {uneven}/train-000001.tar") == "train-000001.tar"
    with pytest.raises(ValueError, match="listed twice"):
        expand_urls([f"{uneven}/train-000000.tar", f"{uneven}/train-00000[0].tar"])

    def keys_of(cfg, location) -> list[str]:
        return sorted(_keys(EpochLoader(cfg, location, 0, 1).epoch(0)))

    # One unit per shard: fsspec's memory filesystem hands every open of a path the same file
    # object, so two parts of one shard read at once would share its position (s3fs, gcsfs and
    # local files open independent handles).
    one = {"interleave": 1}
    everything = keys_of(_cfg(**one), uneven)
    assert (
        keys_of(_cfg(shard_urls=[f"pipe:cat {uneven}/train-{{000000..000002}}.tar"], **one), uneven)
        == everything
    )
    assert keys_of(_cfg(shard_urls=[f"file://{uneven}/train-*.tar"], **one), uneven) == everything
    # An fsspec filesystem (in memory here; s3://, gs:// the same way): index and shards by URL.
    fs = fsspec.filesystem("memory")
    for path in uneven.iterdir():
        fs.pipe(f"/usvs-test/{path.name}", path.read_bytes())
    try:
        assert keys_of(_cfg(**one), "memory://usvs-test") == everything
    finally:
        fs.rm("/usvs-test", recursive=True)
    with pytest.raises(ValueError, match="shard train-000007.tar .* is not in the index"):
        EpochLoader(_cfg(shard_urls=[f"{uneven}/train-000007.tar"]), uneven, 0, 1)


def test_frame_indices_are_uniform_and_in_range():
    assert sample_frame_indices(16, 4, None) == [2, 6, 10, 14]
    rng = random.Random(0)
    for n, t in [(16, 8), (5, 8), (30, 14)]:
        idx = sample_frame_indices(n, t, rng)
        assert len(idx) == t and all(0 <= i < n for i in idx) and idx == sorted(idx)


@pytest.mark.skipif(decord_has_cuda() is None, reason="this Decord is built with CUDA, so GPU decode works")
def test_gpu_decode_without_cuda_decord_is_a_clear_error(monkeypatch):
    with pytest.raises(ConfigError, match="config key data.decode_device=gpu cannot be used"):
        resolve_decoder("decord", "gpu", use_gpu=True, local_rank=0)
    assert not resolve_decoder("decord", "auto", use_gpu=False, local_rank=0).on_gpu
    # A GPU that Decord cannot use: the key, why, and the decoder that can.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="no CUDA support.*data.decoder=torchcodec decodes on the GPU"):
        resolve_decoder("decord", "gpu", use_gpu=True, local_rank=0)


def test_unused_shutil_import_guard():
    assert shutil.which("cat")  # pipe: URLs in these tests run `cat`


def test_frames_cross_processes_as_uint8_and_are_finished_where_consumed(phantom_shards, decoder):
    from usvs_dist.data.decode import BatchFinisher
    from usvs_dist.data.pipeline import RankEpoch

    cfg = _cfg(decoder=decoder, batch_size=3, num_frames=5, frame_size=32)
    loader = EpochLoader(cfg, phantom_shards, rank=0, world_size=1)
    raw = next(
        iter(RankEpoch(cfg, loader.shards, loader.plan(0), 0, loader.clip_seconds, decoder=loader.decoder))
    )
    assert loader.decoder.name == decoder
    stored = read_index(phantom_shards)["size"]
    # T clip frames + the image frame, at the stored size: the crop is drawn, not yet applied.
    assert raw["frames"].dtype == torch.uint8 and raw["frames"].shape == (3, 6, *stored)
    assert raw["crop"].shape == (3, 5)
    assert "video" not in raw and "audio" not in raw
    done = BatchFinisher(cfg)(dict(raw))
    batch = next(iter(loader.epoch(0)))
    assert batch["__key__"] == raw["__key__"]
    for key in ("video", "image", "audio"):
        assert torch.equal(batch[key], done[key]), key
    assert (
        batch["video"].dtype == torch.float32 and 0.0 <= batch["video"].min() <= batch["video"].max() <= 1.0
    )


def test_finishing_in_the_consumer_gives_the_batches_finishing_in_the_workers_gives(phantom_shards, decoder):
    # The GPU configuration's split (workers decode, the consumer crops and finishes), run on CPU.
    cfg = _cfg(decoder=decoder, batch_size=3, num_frames=5, frame_size=48, loader_workers=1)
    loader = EpochLoader(cfg, phantom_shards, rank=0, world_size=1)
    in_workers = list(loader.epoch(0))
    in_consumer = list(loader.epoch(0, finish_in_workers=False))
    assert len(in_workers) == len(in_consumer) >= 2
    for a, b in zip(in_workers, in_consumer, strict=True):
        assert a["__key__"] == b["__key__"]
        assert a["video"].shape == (3, 1, 5, 48, 48)
        for key in ("video", "image", "audio", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_for_a_non_cpu_device_the_batch_is_finished_on_that_device(phantom_shards):
    # "meta" stands in for a GPU here: the workers hand over uint8 frames, the finisher runs there.
    cfg = _cfg(batch_size=3, num_frames=5, frame_size=32)
    batch = next(iter(EpochLoader(cfg, phantom_shards, rank=0, world_size=1).epoch(0, device="meta")))
    assert batch["video"].device.type == "meta" and batch["video"].shape == (3, 1, 5, 32, 32)
    assert batch["audio"].device.type == "meta" and batch["image"].shape == (3, 1, 32, 32)
    assert batch["labels"].device.type == "cpu"  # only what the finisher makes moves


def test_mel_power_equals_torchaudios_mel_spectrogram():
    import torchaudio

    from usvs_dist.data.decode import MelPower

    cfg = DataConfig()
    wave = torch.randn(3, 2 * cfg.sample_rate)
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
    )(wave)
    got = MelPower(cfg)(wave)
    assert got.shape == reference.shape
    assert torch.allclose(got, reference, rtol=1e-4, atol=1e-6)
