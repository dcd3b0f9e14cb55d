"""`bench loader SHARDS`: clips/s of the training loader, per decoder, against raw decoding and a naive loop.

For each decoder (`data.decoder`: Decord, and TorchCodec when it imports and finds FFmpeg):
- raw (the ceiling): the same clips' bytes already in memory, decoded in one process with the
  loader's frame indices (T + 1, sorted), the grey channel of those frames and the narration,
  nothing else.
- loader: EpochLoader for CPU training (tar streaming, decode from bytes, frame sampling,
  batching, then each clip's crop, flip and intensity jitter, float conversion and log-mel, all
  in the DataLoader workers) with 1 and 2 workers, timed from its first batch to its last.
- loader, finishing in the consumer: the GPU configuration (usvs_dist.data.pipeline, stage 5),
  with the batch finished in this process (on the CUDA device when there is one; on a machine
  without, on the CPU: then it measures what the workers sustain, the consumer using another
  core).
And once: naive, one mp4 file per clip in a directory, opened with PyAV, every frame decoded and
converted, T picked, audio resampled by PyAV, log-mel by the loader's own torchaudio transform
(MelPower), so the baseline gains its speed too (a common first loader otherwise).
vs_raw compares with the faster raw decoder; frames_ratio: frames decoded per frame the loader
used. The last line is the configured decoder's (`data.decoder`) loader in the configuration
training uses on this machine (consumer finishing with CUDA, in-worker without) at one worker,
i.e. one decoding core, against the faster raw decoder and the naive loop.
"""

from __future__ import annotations

import random
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from usvs_dist.config import DataConfig, load_config
from usvs_dist.data.backends import (
    Backend,
    choose_decoder,
    open_backend,
    torchcodec_unusable,
    usable_decoders,
)
from usvs_dist.data.decode import MelPower, frames_to_decode, sample_frame_indices
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


def raw_decode(cfg: DataConfig, clips: list[bytes], backend: Backend) -> float:
    """Clips/s of `backend` alone on in-memory clips: the loader's decoder calls (T + 1 frames'
    grey, the narration)."""
    rng = random.Random(0)
    start = time.perf_counter()
    for data in clips:
        video = backend.video(data, cfg.decode_threads)
        idx = sample_frame_indices(len(video), cfg.num_frames, rng)
        wanted, _ = frames_to_decode(video.key_indices(), idx + [rng.randrange(len(video))])
        video.grey(wanted, list(range(len(wanted))))
        backend.wave(data, cfg.sample_rate)
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
    """Print the table; return (vs_raw, vs_naive, frames_ratio) of the configured decoder's loader
    at one worker."""
    cfg = load_config(None, overrides)
    if location is None:
        from usvs_dist.phantom import ensure_phantom_shards

        location = str(ensure_phantom_shards(cfg.phantom, log=print_fn))
    data = cfg.data
    configured = choose_decoder(data.decoder)
    decoders = usable_decoders()
    if (why := torchcodec_unusable()) is not None:
        print_fn(f"torchcodec not measured: {why}")
    payloads = _clips(data, location, clips)
    batches = max(2, len(payloads) // data.batch_size)
    raw_rows: dict[str, list[float]] = {d: [] for d in decoders}
    naive_rates: list[float] = []
    # Training finishes batches on its GPU when there is one (the figures of record), else in the
    # workers; without a GPU the consumer rows finish on one CPU thread of this process.
    consumer = "cuda" if torch.cuda.is_available() else "cpu"
    where = "cuda" if consumer == "cuda" else "cpu, main process"
    shapes = {
        (1, None): "1 worker",
        (2, None): "2 workers",
        (1, consumer): f"1 worker, finishing on {where}",
        (2, consumer): f"2 workers, finishing on {where}",
    }
    loader_rows: dict[tuple[str, int, str | None], list[float]] = {
        (d, w, f): [] for d in decoders for (w, f) in shapes
    }
    ratios: dict[str, list[float]] = {d: [] for d in decoders}
    for _ in range(repeats):
        for decoder in decoders:
            raw_rows[decoder].append(raw_decode(data, payloads, open_backend(decoder)))
        naive_rates.append(naive_pyav(data, payloads))
        for decoder, workers, finish_on in loader_rows:
            config = DataConfig(**{**data.__dict__, "decoder": decoder})
            rate, ratio = loader_rate(config, location, workers, batches, finish_on)
            loader_rows[decoder, workers, finish_on].append(rate)
            ratios[decoder].append(ratio)
    raw = {d: statistics.median(r) for d, r in raw_rows.items()}
    fastest = max(raw, key=raw.get)
    naive = statistics.median(naive_rates)
    print_fn(
        f"{len(payloads)} clips of {location}; T={data.num_frames} at {data.frame_size}px, batch "
        f"{data.batch_size}, augmentation {'on' if data.augment.enabled else 'off'}, "
        f"{data.decode_threads} decode thread(s); median of {repeats}; vs_raw against raw {fastest}"
    )
    print_fn(f"{'path':<64}{'clips/s':>10}{'vs_raw':>9}{'vs_naive':>10}{'frames':>8}")
    for decoder, rate in raw.items():
        name = f"raw {decoder}" + (" (ceiling)" if decoder == fastest else "")
        print_fn(f"{name:<64}{rate:>10.1f}{rate / raw[fastest]:>9.3f}")
    print_fn(f"{'naive PyAV per file':<64}{naive:>10.1f}")
    for (decoder, workers, finish_on), rates in loader_rows.items():
        rate = statistics.median(rates)
        name = f"loader {decoder}, {shapes[workers, finish_on]}"
        frames = statistics.median(ratios[decoder])
        print_fn(f"{name:<64}{rate:>10.1f}{rate / raw[fastest]:>9.3f}{rate / naive:>10.3f}{frames:>8.3f}")
    # The figures of record: one decoding core, finishing where training on this machine does.
    one = statistics.median(loader_rows[configured, 1, consumer if consumer == "cuda" else None])
    frames_ratio = statistics.median(ratios[configured])
    print_fn(
        f"vs_raw={one / raw[fastest]:.3f} vs_naive={one / naive:.3f} frames_ratio={frames_ratio:.3f} "
        f"decoder={configured} raw_fastest={fastest}"
    )
    return one / raw[fastest], one / naive, frames_ratio
