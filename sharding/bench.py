"""`sharding bench MANIFEST`: scan-seconds sharded per core-second, against a naive cutter.

- build: `sharding build` as the CLI runs it (decode once per scan, grid resampling, speech
  measure, one encode per clip, tar writing, hashing), into a temporary folder.
- baseline: what a first script does: for every clip, seek the scan to t0 with PyAV, decode the
  clip's frames and audio, scale and re-encode them; nothing else (no speech measure, no shards).
Core-seconds are CPU time (user + system) of this process and its worker processes, so threads
and processes are charged for what they use; wall time is printed beside it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from pydicom.pixels import iter_pixels

from sharding import dicom
from sharding.build import BuildOptions, Execution, build
from sharding.manifest import read_manifest
from sharding.media import MediaError, encode_mp4, grey_square
from usvs_format import schema

BENCH_SALT = b"sharding-bench-throwaway-salt"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def naive_cut(video: Path, audio: Path | None, opts: BuildOptions) -> int:
    """Cut one scan clip by clip (seek, decode the window, scale, encode); returns the clips made.

    A DICOM cine is cut the same way: for each clip, pydicom decodes the frames whose times fall
    in the window (its `indices`), which is the seek of a frame-indexed file.
    """
    per_clip = round(opts.clip_seconds * opts.fps)
    step = opts.stride_seconds or opts.clip_seconds
    samples = round(opts.clip_seconds * schema.AUDIO_RATE)
    cine = dicom.is_dicom(video)
    if cine:
        header = dicom.read_header(video)
        times, source_fps = dicom.frame_times(header, dicom.frame_count(header), opts.dicom_fps)
        duration = times[-1] + 1.0 / source_fps
    else:
        with av.open(str(video)) as container:
            duration = float(container.duration or 0) / av.time_base
    made = 0
    t0 = 0.0
    while t0 + opts.clip_seconds <= duration + 1e-6:
        t1 = t0 + opts.clip_seconds
        if cine:
            window = np.flatnonzero((times >= t0 - 1e-6) & (times < t1)).tolist()
            with dicom.quiet():
                frames = [dicom.grey_frame(p, header, opts.size) for p in iter_pixels(video, indices=window)]
        else:
            frames = _naive_window(video, t0, t1, opts.size)
        if not frames:
            break
        pick = np.linspace(0, len(frames) - 1, per_clip).round().astype(int)
        wave = None if audio is None and cine else _naive_narration(audio or video, t0, t1, samples)
        encode_mp4(np.stack([frames[i] for i in pick]), opts.fps, wave, schema.AUDIO_RATE, crf=opts.crf)
        made += 1
        t0 += step
    return made


def _naive_narration(path: Path, t0: float, t1: float, samples: int) -> np.ndarray | None:
    """Narration in [t0, t1) at the stored rate (seek with PyAV, decode, resample); None without
    an audio stream (a video-only scan)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        container.seek(int(t0 / stream.time_base), stream=stream, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=schema.AUDIO_RATE)
        chunks = []
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= t1:
                break
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
    return np.concatenate(chunks)[:samples] if chunks else np.zeros(samples, np.float32)


def _naive_window(video: Path, t0: float, t1: float, size: int) -> list[np.ndarray]:
    """Frames in [t0, t1) of a video, scaled: seek to t0 with PyAV and decode from there."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        container.seek(int(t0 / stream.time_base), stream=stream, backward=True)
        frames = []
        for frame in container.decode(stream):
            if frame.time is None or frame.time < t0 - 1e-6:
                continue
            if frame.time >= t1:
                break
            frames.append(grey_square(frame, size))
    return frames


def run(manifest: Path, opts: BuildOptions, workers: int, print_fn=print) -> tuple[float, float]:
    """Print the table; return (scan_s_per_core_s of build, its ratio to the baseline)."""
    rows = read_manifest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        salt = Path(tmp) / "salt"
        salt.write_bytes(BENCH_SALT)
        cpu, wall = _cpu_seconds(), time.perf_counter()
        index = build(
            manifest,
            Path(tmp) / "shards",
            salt,
            opts,
            log=lambda *_: None,
            execution=Execution(workers=workers),
        )
        build_cpu, build_wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    scan_s = index["totals"]["scan_seconds"]
    failed = {e["manifest_line"] for e in index["errors"]}
    cpu, wall = _cpu_seconds(), time.perf_counter()
    naive_clips = 0
    for row in rows:
        if row.row in failed:
            continue
        try:
            naive_clips += naive_cut(row.video, row.audio, opts)
        except (MediaError, av.error.FFmpegError, IndexError) as exc:
            print_fn(
                f"baseline: manifest line {row.row} failed ({type(exc).__name__}); its seconds still count"
            )
    naive_cpu, naive_wall = _cpu_seconds() - cpu, time.perf_counter() - wall

    print_fn(
        f"{index['totals']['scans']} scans, {scan_s:.1f} scan-seconds -> {opts.clip_seconds} s clips at "
        f"{opts.fps} fps, {opts.size}px ({index['totals']['failed_scans']} scans failed)"
    )
    print_fn(
        f"{'path':<28}{'clips':>8}{'core-s':>10}{'wall-s':>10}{'scan-s/core-s':>16}{'scan-s/wall-s':>16}"
    )
    for name, clips, c, w in (
        (f"build ({workers} worker(s))", index["totals"]["clips"], build_cpu, build_wall),
        ("baseline (PyAV, per clip)", naive_clips, naive_cpu, naive_wall),
    ):
        print_fn(f"{name:<28}{clips:>8}{c:>10.1f}{w:>10.1f}{scan_s / c:>16.2f}{scan_s / w:>16.2f}")
    per_core = scan_s / build_cpu
    ratio = per_core / (scan_s / naive_cpu)
    print_fn(f"scan_s_per_core_s={per_core:.3f} ratio_vs_baseline={ratio:.3f}")
    return per_core, ratio
