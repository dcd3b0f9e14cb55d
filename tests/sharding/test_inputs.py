"""What `sharding build` accepts: any frame rate (29.97, variable), any resolution and codec,
narration embedded or in a wav/flac/mp3/m4a file; clips keep sound and picture aligned."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from sharding.build import BuildOptions, build
from tests.sharding.scankit import moving_frames, tone, write_audio, write_manifest, write_video
from tests.sharding.test_build import all_clips
from usvs_dist.data import schema
from usvs_dist.data.decode import read_wave

QUIET = dict(log=lambda *_: None)


def _onsets(signal: np.ndarray, threshold: float, gap: int) -> list[int]:
    """Indices where `signal` first rises above `threshold` after at least `gap` indices below it."""
    above = np.flatnonzero(signal > threshold)
    return [int(i) for k, i in enumerate(above) if k == 0 or i - above[k - 1] > gap]


@pytest.mark.parametrize("narration", ["wav file at 44.1 kHz", "aac stream at 48 kHz"])
@pytest.mark.parametrize("stored_fps", [8.0, 29.97])
def test_clicks_and_flashes_stay_within_one_frame(tmp_path, salt_file, narration, stored_fps):
    src_fps, seconds = 30000 / 1001, 8.0
    n = round(seconds * src_fps)
    flash_frames = [40, 95, 150, 200]
    frames = np.full((n, 48, 64), 20, np.uint8)
    rate = 44100 if narration.startswith("wav") else 48000
    audio = np.zeros(round(seconds * rate), np.float32)
    rng = np.random.default_rng(0)
    for f in flash_frames:
        frames[f : f + 4] = 230  # 4 source frames (133 ms): every stored grid of >= 8 fps sees it
        a = round(f / src_fps * rate)
        audio[a : a + rate // 200] = 0.9 * rng.choice([-1.0, 1.0], rate // 200)  # a 5 ms click
    if narration.startswith("wav"):
        write_video(tmp_path / "scan.mp4", frames, src_fps)
        row = {"video": "scan.mp4", "audio": write_audio(tmp_path / "narration.wav", audio, rate).name}
    else:
        write_video(tmp_path / "scan.mp4", frames, src_fps, audio_N=audio, audio_rate=rate)
        row = {"video": "scan.mp4"}
    manifest = write_manifest(tmp_path / "manifest.csv", [{"scan_id": "s", "patient_id": "p", **row}])
    opts = BuildOptions(clip_seconds=2.0, fps=stored_fps, size=32, split_fractions=(1.0, 0.0, 0.0))
    build(manifest, tmp_path / "out", salt_file, opts, **QUIET)

    truth = [f / src_fps for f in flash_frames]
    seen_video, seen_audio = [], []
    for _, meta, mp4 in all_clips(tmp_path / "out"):
        video = decord.VideoReader(io.BytesIO(mp4), num_threads=1)
        brightness = video.get_batch(list(range(len(video)))).asnumpy()[..., 0].mean(axis=(1, 2))
        seen_video += [meta["t0"] + j / stored_fps for j in _onsets(brightness, 125, 1)]
        wave = np.abs(read_wave(mp4, schema.AUDIO_RATE))
        seen_audio += [
            meta["t0"] + i / schema.AUDIO_RATE for i in _onsets(wave, 0.3, schema.AUDIO_RATE // 20)
        ]
    assert len(seen_video) == len(seen_audio) == len(truth), (seen_video, seen_audio)
    for t, v, a in zip(truth, seen_video, seen_audio, strict=True):
        assert abs(a - t) <= 0.005, f"click at {t:.3f} s heard at {a:.3f} s"
        assert abs(v - a) <= 1 / stored_fps, f"flash seen at {v:.3f} s, click heard at {a:.3f} s"


def _ramp_video(path: Path, times: list[float], size: tuple[int, int], **kw) -> None:
    """A scan whose frame k has brightness _level(k), shown at times[k] (variable rate when uneven)."""
    h, w = size
    frames = np.stack([np.full((h, w), _level(k), np.uint8) for k in range(len(times))])
    codec = kw.pop("codec", "libx264")
    pix_fmt = kw.pop("pix_fmt", "yuv420p")
    with av.open(str(path), "w", **kw) as out:
        vs = out.add_stream(codec, rate=30)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frames[k], format="gray").reformat(format=pix_fmt)
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())


def _level(k: int) -> int:
    return 20 + 6 * (k % 38)  # neighbours differ by 6 grey levels; the codecs keep each within 2.5


RAMP_SCANS = {
    # name: (frame times, frame size H x W, writer options)
    "29.97 fps, 96x72 H.264": ([k * 1001 / 30000 for k in range(100)], (72, 96), {}),
    "12.5 fps, 333x251 MJPEG avi (odd size)": (
        [k / 12.5 for k in range(45)],
        (251, 333),
        {"codec": "mjpeg", "pix_fmt": "yuvj444p", "format": "avi"},
    ),
    "variable: 30 fps then 10 fps, mkv": (
        [k / 30 for k in range(45)] + [1.5 + k / 10 for k in range(1, 30)],
        (64, 80),
        {"format": "matroska"},
    ),
}


def test_any_frame_rate_and_resolution_lands_on_the_stored_grid(tmp_path, salt_file):
    rows = []
    for i, (name, (times, size, kw)) in enumerate(RAMP_SCANS.items()):
        video = tmp_path / f"scan{i}.{kw.get('format', 'mp4').replace('matroska', 'mkv')}"
        _ramp_video(video, times, size, **kw)
        write_audio(tmp_path / f"n{i}.flac", tone(times[-1] + 0.5, 22050), 22050)
        rows.append({"scan_id": name, "patient_id": f"p{i}", "video": video.name, "audio": f"n{i}.flac"})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    fps = 8.0
    # Whole frames: each frame is one flat grey level (its index), and a masked rim would make
    # the encoder round the levels differently; masking has its own tests (test_mask.py).
    opts = BuildOptions(clip_seconds=1.0, fps=fps, size=32, split_fractions=(1.0, 0.0, 0.0), mask="none")
    index = build(manifest, tmp_path / "out", salt_file, opts, **QUIET)
    assert index["errors"] == [] and index["totals"]["scans"] == 3

    from sharding.deid import hash_id
    from tests.conftest import SALT

    checked = 0
    for name, (times, _, _) in RAMP_SCANS.items():
        scan = hash_id(SALT, "scan", name)
        clips = [(m, mp4) for _, m, mp4 in all_clips(tmp_path / "out") if m["scan"] == scan]
        duration = times[-1] + (times[-1] - times[-2])
        assert len(clips) == int(duration * fps + 1e-6) // round(fps), name
        for meta, mp4 in clips:
            frames = decord.VideoReader(io.BytesIO(mp4), num_threads=1).get_batch(list(range(8))).asnumpy()
            for j, frame in enumerate(frames[..., 0]):
                t = meta["t0"] + j / fps
                gap = min(abs(x - t) for x in times)
                nearest = [k for k, x in enumerate(times) if abs(x - t) <= gap + 1e-6]  # two at a tie
                value = float(frame[12:20, 12:20].mean())  # inside the picture, whatever the letterbox
                assert min(abs(value - _level(k)) for k in nearest) <= 2.5, (
                    f"{name}: t={t:.3f} shows {value}, not frame {nearest}"
                )
                checked += 1
    assert checked == 8 * 10  # 3.3 s, 3.6 s and 4.4 s scans: 3 + 3 + 4 one-second clips


def test_narration_files_of_every_format_are_resampled_and_aligned(tmp_path, salt_file):
    seconds, rate = 6.0, 44100
    t = np.arange(round(seconds * rate)) / rate
    # Second k of the narration is a tone of 400 + 150 k Hz: a clip's pitch says where it came from.
    wave = (0.3 * np.sin(2 * np.pi * (400 + 150 * np.floor(t)) * t)).astype(np.float32)
    rows = []
    for i, suffix in enumerate([".wav", ".flac", ".mp3", ".m4a"]):
        write_video(tmp_path / f"scan{i}.mp4", moving_frames(round(seconds * 15), 48, 64, seed=i), 15.0)
        write_audio(tmp_path / f"narration{i}{suffix}", wave, rate)
        rows.append(
            {
                "scan_id": suffix,
                "patient_id": f"p{i}",
                "video": f"scan{i}.mp4",
                "audio": f"narration{i}{suffix}",
            }
        )
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    opts = BuildOptions(clip_seconds=2.0, fps=8.0, size=32, split_fractions=(1.0, 0.0, 0.0))
    index = build(manifest, tmp_path / "out", salt_file, opts, **QUIET)
    assert index["errors"] == [] and index["totals"]["clips"] == 4 * 3

    for _, meta, mp4 in all_clips(tmp_path / "out"):
        audio = read_wave(mp4, schema.AUDIO_RATE)
        assert len(audio) >= 2 * schema.AUDIO_RATE - 1024
        for second in range(2):
            part = audio[second * schema.AUDIO_RATE + 1600 : (second + 1) * schema.AUDIO_RATE - 1600]
            spectrum = np.abs(np.fft.rfft(part))
            pitch = np.argmax(spectrum) * schema.AUDIO_RATE / len(part)
            expected = 400 + 150 * (meta["t0"] + second)
            assert abs(pitch - expected) < 10, f"clip at {meta['t0']} s, second {second}: {pitch:.0f} Hz"
        assert meta["speech_ratio"] > 0.9
