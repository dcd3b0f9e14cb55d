"""`bench loader SHARDS`: clips/s of the training loader against Decord's ceiling and a naive loop.

- loader: EpochLoader for CPU training (tar streaming, Decord decode from bytes, frame
  sampling, batching, then each clip's crop, flip and intensity jitter, float conversion and
  log-mel, all in the DataLoader workers) with 1 and 2 workers, timed from its first batch to
  its last.
- loader, finishing in the consumer: the GPU configuration (usvs_dist.data.pipeline, stage 5),
  with the batch finished in this process (on the CUDA device when there is one; on a machine
  without, on the CPU: then it measures what the workers sustain, the consumer using another
  core).
- raw Decord (the ceiling): the same clips' bytes already in memory, decoded in one process
  with the same frame indices and the same audio read, nothing else.
- naive: one mp4 file per clip in a directory, opened with PyAV, every frame decoded and
  converted, T picked, audio resampled by PyAV, log-mel by the loader's own torchaudio
  transform (MelPower), so the baseline gains its speed too (a common first loader otherwise).
frames_ratio: frames Decord decoded per frame the loader used. The last line compares the
configuration training uses on this machine (consumer finishing with CUDA, in-worker without) at
one worker, i.e. one decoding core, with each baseline.
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
from usvs_dist.data.decode import MelPower, frames_to_decode, read_wave, sample_frame_indices
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
    mel = MelPower(cfg)
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


def loader_rate(
    cfg: DataConfig, location: str, workers: int, batches: int, finish_on: str | None = None
) -> tuple[float, float]:
    """(clips/s, frames decoded per frame used) of the loader with `workers` DataLoader workers,
    finishing batches in the workers, or in this process on device `finish_on`."""
    cfg = DataConfig(**{**cfg.__dict__, "loader_workers": workers})
    device = finish_on or "cpu"
    loader = EpochLoader(cfg, location, rank=0, world_size=1, use_gpu=device == "cuda")
    batches = min(batches, loader.plan(0).batches_per_rank)
    it = iter(loader.epoch(0, device=device, finish_in_workers=finish_on is None))
    threads = torch.get_num_threads()
    if finish_on == "cpu":
        torch.set_num_threads(1)  # one core stands in for the GPU; more would spin on the workers' cores
    try:
        first = next(it)  # worker start-up is not throughput
        start = time.perf_counter()
        last = first
        for _ in range(batches - 1):
            last = next(it)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        del it
    ratio = float(last["frames_decoded"]) / max(1, int(last["frames_used"]))
    return (batches - 1) * cfg.batch_size / seconds, ratio


def run(
    location: str | None, overrides: list[str], clips: int, repeats: int, print_fn=print
) -> tuple[float, float, float]:
    """Print the table; return (vs_raw, vs_naive, frames_ratio) at one loader worker."""
    cfg = load_config(None, overrides)
    if location is None:
        from usvs_dist.phantom import ensure_phantom_shards

        location = str(ensure_phantom_shards(cfg.phantom, log=print_fn))
    data = cfg.data
    payloads = _clips(data, location, clips)
    batches = max(2, len(payloads) // data.batch_size)
    rows: dict[str, list[float]] = {"raw Decord (ceiling)": [], "naive PyAV per file": []}
    # Training finishes batches on its GPU when there is one (the figures of record), else in the
    # workers; without a GPU the consumer rows finish on one CPU thread of this process.
    consumer = "cuda" if torch.cuda.is_available() else "cpu"
    where = "cuda" if consumer == "cuda" else "cpu, main process"
    loaders = {
        (1, None): "loader, 1 worker",
        (2, None): "loader, 2 workers",
        (1, consumer): f"loader, 1 worker, finishing on {where}",
        (2, consumer): f"loader, 2 workers, finishing on {where}",
    }
    loader_rows: dict[tuple[int, str | None], list[float]] = {k: [] for k in loaders}
    ratios = []
    for _ in range(repeats):
        rows["raw Decord (ceiling)"].append(raw_decord(data, payloads))
        rows["naive PyAV per file"].append(naive_pyav(data, payloads))
        for workers, finish_on in loader_rows:
            rate, ratio = loader_rate(data, location, workers, batches, finish_on)
            loader_rows[workers, finish_on].append(rate)
            ratios.append(ratio)
    raw = statistics.median(rows["raw Decord (ceiling)"])
    naive = statistics.median(rows["naive PyAV per file"])
    print_fn(
        f"{len(payloads)} clips of {location}; T={data.num_frames} at {data.frame_size}px, batch "
        f"{data.batch_size}, augmentation {'on' if data.augment.enabled else 'off'}; median of {repeats}"
    )
    print_fn(f"{'path':<50}{'clips/s':>10}{'vs_raw':>9}{'vs_naive':>10}")
    for name, rates in rows.items():
        print_fn(f"{name:<50}{statistics.median(rates):>10.1f}")
    for key, rates in loader_rows.items():
        rate = statistics.median(rates)
        print_fn(f"{loaders[key]:<50}{rate:>10.1f}{rate / raw:>9.3f}{rate / naive:>10.3f}")
    # The figures of record: one decoding core, finishing where training on this machine does.
    one = statistics.median(loader_rows[1, consumer if consumer == "cuda" else None])
    frames_ratio = statistics.median(ratios)
    print_fn(f"vs_raw={one / raw:.3f} vs_naive={one / naive:.3f} frames_ratio={frames_ratio:.3f}")
    return one / raw, one / naive, frames_ratio
