"""Writers of small raw scans, narration files and manifests for sharding tests."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MANIFEST_COLUMNS = ["scan_id", "patient_id", "video", "audio", "labels", "gaze"]
AUDIO_CODECS = {
    ".wav": ("wav", "pcm_s16le", "s16"),
    ".flac": ("flac", "flac", "s16"),
    ".mp3": ("mp3", "libmp3lame", "fltp"),
    ".m4a": ("ipod", "aac", "fltp"),
}


def write_video(
    path: Path,
    frames_THW: np.ndarray,
    fps: float,
    *,
    audio_N: np.ndarray | None = None,
    audio_rate: int = 44100,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    container_format: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Encode grey frames (and optional mono audio) with any PyAV codec; returns `path`."""
    T, H, W = frames_THW.shape
    with av.open(str(path), "w", format=container_format) as out:
        out.metadata.update(metadata or {})
        vs = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = W, H, pix_fmt
        vs.metadata.update(metadata or {})
        ast = None
        if audio_N is not None:
            ast = out.add_stream("aac", rate=audio_rate)
            ast.layout = "mono"
            ast.metadata.update(metadata or {})
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(frames_THW[t], format="gray").reformat(format=pix_fmt)
            frame.pts = t
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if ast is not None:
            _mux_audio(out, ast, audio_N, audio_rate, "fltp")
    return path


def write_audio(path: Path, wave_N: np.ndarray, rate: int, metadata: dict[str, str] | None = None) -> Path:
    """Write mono audio as wav, flac, mp3 or m4a (by the suffix of `path`); returns `path`."""
    fmt, codec, sample_fmt = AUDIO_CODECS[path.suffix]
    with av.open(str(path), "w", format=fmt) as out:
        out.metadata.update(metadata or {})
        ast = out.add_stream(codec, rate=rate)
        ast.layout = "mono"
        _mux_audio(out, ast, wave_N, rate, sample_fmt)
    return path


def _mux_audio(out, ast, wave_N: np.ndarray, rate: int, sample_fmt: str) -> None:
    chunk = ast.codec_context.frame_size or 1024
    wave = np.clip(np.asarray(wave_N, np.float32), -1, 1)
    for start in range(0, len(wave), chunk):
        part = wave[start : start + chunk]
        if sample_fmt == "s16":
            frame = av.AudioFrame.from_ndarray(
                (part * 32767).astype(np.int16)[None], format="s16", layout="mono"
            )
        else:
            frame = av.AudioFrame.from_ndarray(part[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(ast.encode(frame))
    out.mux(ast.encode())


def moving_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n grey frames of a bright bar sweeping over noise: every frame differs from its neighbours."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(30, 90, (n, height, width), dtype=np.uint8)
    for t in range(n):
        x = (t * 3) % max(1, width - 8)
        frames[t, :, x : x + 8] = 230
    return frames


def tone(seconds: float, rate: int, hz: float = 440.0, level: float = 0.3) -> np.ndarray:
    """A sine narration stand-in, loud enough to count as speech."""
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """manifest.csv from dicts keyed by MANIFEST_COLUMNS (missing columns empty)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in MANIFEST_COLUMNS})
    return path


def retag(src: Path, dst: Path, tags: dict[str, str]) -> Path:
    """Copy a media file's streams unchanged into `dst` with `tags` on the container and every stream."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=inp.format.name.split(",")[0]) as out:
        out.metadata.update(tags)
        streams = {}
        for s in inp.streams:
            streams[s.index] = out.add_stream_from_template(s)
            streams[s.index].metadata.update(tags)
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def build_args(manifest: Path, out: Path, salt_file: Path, flags: str = "") -> list[str]:
    """`sharding build` arguments: the manifest, --out, --salt-file, then `flags` (space-separated)."""
    return ["build", str(manifest), "--out", str(out), "--salt-file", str(salt_file), *flags.split()]


def write_timed_video(
    path: Path, frames_THW: np.ndarray, times: list[float], container_format: str | None = None
) -> Path:
    """H.264 grey frames shown at `times` (seconds, millisecond time base): gaps, odd rates."""
    T, H, W = frames_THW.shape
    with av.open(str(path), "w", format=container_format) as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frames_THW[k], format="gray").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    return path


def assert_rows_reported(index: dict, err: str, cases: dict) -> dict[int, dict]:
    """Each case (manifest line 2 on, in order; value (fields, column, words)) failed naming its
    column, with `words` in the reason, on stderr by line and column; or did not fail when its
    column is None. Returns index.json's errors by manifest line."""
    errors = {e["manifest_line"]: e for e in index["errors"]}
    for line, (sid, (_, column, words)) in enumerate(cases.items(), start=2):
        if column is None:
            assert line not in errors, (sid, errors.get(line))
            continue
        assert errors[line]["file"] == column, (sid, errors[line])
        assert words in errors[line]["reason"], (sid, errors[line])
        assert f"manifest line {line} ({column} file)" in err, sid
    return errors
