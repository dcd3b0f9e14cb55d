"""`bench loader SHARDS`: clips/s of the training loader against Decord's ceiling and a naive loop.

- loader: EpochLoader for CPU training (tar streaming, Decord decode from bytes, frame
  sampling, crop and flip, batching, float conversion with intensity jitter and log-mel, all in
  the DataLoader workers) with 1 and 2 workers, timed from its first batch to its last.
- raw Decord (the ceiling): the same clips' bytes already in memory, decoded in one process
  with the same frame indices and the same audio read, nothing else.
- naive: one mp4 file per clip in a directory, opened with PyAV, every frame decoded and
  converted, T picked, audio resampled by PyAV, log-mel by torchaudio (a common first loader).
frames_ratio: frames Decord decoded per frame the loader used.
"""

from __future__ import annotations

import io
import random
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch

from usvs_dist.config import DataConfig, load_config
from usvs_dist.data.decode import frames_to_decode, mel_transform, read_wave, sample_frame_indices
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.shards import load_index, split_shards


def _clips(cfg: DataConfig, location: str, limit: int) -> list[bytes]:
    """The first `limit` mp4 payloads of the split (local shard folders only)."""
    index = load_index(location)
    out: list[bytes] = []
    for shard in split_shards(location, index, cfg.split):
        with tarfile.open(shard.url) as tar:
            for member in tar:
                if member.name.endswith(".mp4"):
                    out.append(tar.extractfile(member).read())
                    if len(out) == limit:
                        return out
    return out


def raw_decord(cfg: DataConfig, clips: list[bytes]) -> float:
    """Clips/s of Decord alone on in-memory clips: the loader's Decord calls (T + 1 frames, the audio)."""
    rng = random.Random(0)
    start = time.perf_counter()
    for data in clips:
        video = decord.VideoReader(io.BytesIO(data), num_threads=cfg.decode_threads)
        idx = sample_frame_indices(len(video), cfg.num_frames, rng)
        wanted, _ = frames_to_decode(video, idx + [rng.randrange(len(video))])
        video.get_batch(wanted).asnumpy()
        read_wave(data, cfg.sample_rate)
    return len(clips) / (time.perf_counter() - start)


def naive_pyav(cfg: DataConfig, clips: list[bytes]) -> float:
    """Clips/s of a per-file PyAV loader: decode every frame, pick T, resample audio, log-mel."""
    mel = mel_transform(cfg)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, data in enumerate(clips):
            path = Path(tmp) / f"{k:06d}.mp4"
            path.write_bytes(data)
            paths.append(path)
        start = time.perf_counter()
        for path in paths:
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
            idx = sample_frame_indices(len(frames), cfg.num_frames, rng)
            video = torch.from_numpy(np.stack([frames[i] for i in idx])).float() / 255
            with av.open(str(path)) as container:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.sample_rate)
                chunks = [
                    r.to_ndarray().reshape(-1)
                    for f in container.decode(audio=0)
                    for r in resampler.resample(f)
                ]
            wave = torch.from_numpy(np.concatenate(chunks))
            torch.log(mel(wave) + 1e-6)
            del video
        return len(paths) / (time.perf_counter() - start)


def loader_rate(cfg: DataConfig, location: str, workers: int, batches: int) -> tuple[float, float]:
    """(clips/s, frames decoded per frame used) of the loader with `workers` DataLoader workers."""
    cfg = DataConfig(**{**cfg.__dict__, "loader_workers": workers})
    loader = EpochLoader(cfg, location, rank=0, world_size=1)
    batches = min(batches, loader.plan(0).batches_per_rank)
    it = iter(loader.epoch(0))
    first = next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    last = first
    for _ in range(batches - 1):
        last = next(it)
    seconds = time.perf_counter() - start
    del it
    ratio = float(last["frames_decoded"]) / max(1, int(last["frames_used"]))
    return (batches - 1) * cfg.batch_size / seconds, ratio


def run(
    location: str | None, overrides: list[str], clips: int, repeats: int, print_fn=print
) -> tuple[float, float, float]:
    """Print the table; return (vs_raw, vs_naive, frames_ratio) at one loader worker."""
    cfg = load_config(None, overrides)
    if location is None:
        from usvs_dist.train.phantom_cache import ensure_phantom_shards

        location = str(ensure_phantom_shards(cfg.phantom, log=print_fn))
    data = cfg.data
    payloads = _clips(data, location, clips)
    batches = max(2, len(payloads) // data.batch_size)
    rows: dict[str, list[float]] = {"raw Decord (ceiling)": [], "naive PyAV per file": []}
    loader_rows: dict[int, list[float]] = {1: [], 2: []}
    ratios = []
    for _ in range(repeats):
        rows["raw Decord (ceiling)"].append(raw_decord(data, payloads))
        rows["naive PyAV per file"].append(naive_pyav(data, payloads))
        for workers in loader_rows:
            rate, ratio = loader_rate(data, location, workers, batches)
            loader_rows[workers].append(rate)
            ratios.append(ratio)
    print_fn(
        f"{len(payloads)} clips of {location}; T={data.num_frames} at {data.frame_size}px, batch "
        f"{data.batch_size}, augmentation {'on' if data.augment.enabled else 'off'}; median of {repeats}"
    )
    print_fn(f"{'path':<32}{'clips/s':>10}")
    for name, rates in rows.items():
        print_fn(f"{name:<32}{statistics.median(rates):>10.1f}")
    for workers, rates in loader_rows.items():
        print_fn(f"{f'loader, {workers} worker(s)':<32}{statistics.median(rates):>10.1f}")
    one = statistics.median(loader_rows[1])
    vs_raw = one / statistics.median(rows["raw Decord (ceiling)"])
    vs_naive = one / statistics.median(rows["naive PyAV per file"])
    frames_ratio = statistics.median(ratios)
    print_fn(f"vs_raw={vs_raw:.3f} vs_naive={vs_naive:.3f} frames_ratio={frames_ratio:.3f}")
    return vs_raw, vs_naive, frames_ratio
