"""The phantom data set: deterministic B-mode-like fetal 'scans' with narration, labels and gaze.

Each scan is a plan of segments over the 14 classes of usvs_format.PLANES. A plane
segment shows that class's anatomy (ellipses, rings and bright lines at class-specific places and
echogenicities, fixed across seeds so a class looks the same in every scan) inside an ultrasound
sector with multiplicative speckle, depth attenuation and probe jitter; background segments show
the probe searching. Text like a scanner's (name, date of birth, clinic) is burned into the
corners outside the sector. For a share of plane segments the narration is 'about the plane': voiced
syllables whose formants are specific to the class; otherwise it is unrelated chatter (random
formants) or silence. Gaze follows the plane's key structure with jitter.

Everything is drawn from `numpy.random.default_rng` streams derived from (seed, scan), so the same
seed gives the same arrays and, with a fixed encoder thread count, the same bytes.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sharding.media import encode_mp4
from usvs_format import BACKGROUND, PLANES

N_PLANES = len(PLANES) - 1
SECTOR_HALF_ANGLE = np.deg2rad(36.0)
CLASS_SEED = 20200408
"""Seeds the class definitions (anatomy, formants); fixed so classes mean the same in every data set."""


@dataclass(frozen=True)
class Segment:
    """A stretch of a scan showing one class, and what the narration does meanwhile."""

    start: float
    end: float
    label: int
    narration: str
    """'plane' (about this plane), 'chatter' (unrelated speech) or 'silence'."""


@dataclass(frozen=True)
class ScanSpec:
    """Everything needed to render one phantom scan; derived from (seed, scan index)."""

    index: int
    seconds: float
    fps: float
    size: int
    audio_rate: int
    segments: tuple[Segment, ...]
    seed: int


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _class_anatomy(label: int) -> list[tuple]:
    """Primitives of a class in sector coordinates (x in [-1,1], depth in [0,1])."""
    rng = _rng(CLASS_SEED, label)
    prims: list[tuple] = []
    kinds = ("ellipse", "ring", "line")
    n = 2 + label % 3
    for k in range(n):
        kind = kinds[(label + k) % 3] if k else kinds[label % 2]  # the key structure: ellipse or ring
        cx, cy = rng.uniform(-0.35, 0.35), rng.uniform(0.3, 0.75)
        ax, ay = rng.uniform(0.08, 0.25), rng.uniform(0.06, 0.2)
        angle = rng.uniform(0, np.pi)
        echo = rng.choice([0.05, 0.6, 1.4, 2.2])
        prims.append((kind, cx, cy, ax, ay, angle, echo))
    return prims


def _class_formants(label: int) -> np.ndarray:
    """Three (F1, F2) syllables per class: the spectral pattern the narration carries."""
    rng = _rng(CLASS_SEED, 1000 + label)
    return np.stack([rng.uniform(300, 900, 3), rng.uniform(1000, 2800, 3)], axis=1)


def make_spec(
    seed: int, index: int, seconds: float, fps: float, size: int, audio_rate: int, speech_share: float
) -> ScanSpec:
    """Draw the segment plan of scan `index` of a phantom data set with `seed`."""
    rng = _rng(seed, index, 1)
    segments: list[Segment] = []
    t = 0.0
    plane_next = bool(rng.integers(2))
    while t < seconds - 1e-9:
        length = float(rng.uniform(3.0, 6.0) if plane_next else rng.uniform(1.0, 3.0))
        end = min(seconds, t + length)
        if plane_next:
            label = int(rng.integers(N_PLANES))
            narration = (
                "plane" if rng.random() < speech_share else ("chatter", "silence")[int(rng.integers(2))]
            )
        else:
            label = BACKGROUND
            narration = ("chatter", "silence")[int(rng.integers(2))]
        segments.append(Segment(round(t, 6), round(end, 6), label, narration))
        t, plane_next = end, not plane_next
    return ScanSpec(index, seconds, fps, size, audio_rate, tuple(segments), seed)


def frame_labels(spec: ScanSpec) -> np.ndarray:
    """Per-frame class index of a scan."""
    n = int(round(spec.seconds * spec.fps))
    times = np.arange(n) / spec.fps
    labels = np.full(n, BACKGROUND, np.int64)
    for seg in spec.segments:
        labels[(times >= seg.start) & (times < seg.end)] = seg.label
    return labels


class _Renderer:
    """Renders sector frames; coordinate grids are built once per size."""

    def __init__(self, size: int):
        self.size = size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        # Apex above the top edge so the sector's near field is visible, as on real probes.
        self.x = (xs - size / 2) / (size / 2)
        self.y = (ys + 0.08 * size) / (1.08 * size)
        self.r = np.hypot(self.x, self.y)
        self.theta = np.arctan2(self.x, self.y)
        self.sector = (np.abs(self.theta) < SECTOR_HALF_ANGLE) & (self.r < 1.0) & (self.r > 0.08)
        self.attenuation = np.exp(-1.2 * self.r).astype(np.float32)

    def frame(
        self, prims: list[tuple], dx: float, dy: float, rot: float, rng: np.random.Generator
    ) -> np.ndarray:
        c, s = np.cos(rot), np.sin(rot)
        xr = c * (self.x - dx) - s * (self.y - dy)
        yr = s * (self.x - dx) + c * (self.y - dy)
        tissue = np.full(self.x.shape, 0.35, np.float32)
        for kind, cx, cy, ax, ay, angle, echo in prims:
            ca, sa = np.cos(angle), np.sin(angle)
            u = (ca * (xr - cx) + sa * (yr - cy)) / ax
            v = (-sa * (xr - cx) + ca * (yr - cy)) / ay
            d = u * u + v * v
            if kind == "ellipse":
                tissue = np.where(d < 1.0, echo, tissue)
            elif kind == "ring":
                tissue = np.where((d < 1.0) & (d > 0.6), echo + 0.8, tissue)
            else:
                tissue = np.where((np.abs(v) < 0.12) & (np.abs(u) < 1.0), echo + 1.5, tissue)
        speckle = rng.rayleigh(0.8, self.x.shape).astype(np.float32)
        img = tissue * speckle * self.attenuation
        img = np.log1p(6.0 * img) / np.log1p(6.0 * 3.0)
        img = np.clip(img * 255.0, 0, 255) * self.sector
        return img.astype(np.uint8)


def _background_prims(rng: np.random.Generator) -> list[tuple]:
    return [
        (
            "ellipse",
            rng.uniform(-0.4, 0.4),
            rng.uniform(0.3, 0.8),
            rng.uniform(0.05, 0.3),
            rng.uniform(0.05, 0.2),
            rng.uniform(0, np.pi),
            rng.choice([0.1, 0.8, 1.5]),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]


BURNED_IN_TEXT = ("DOE^JANE", "03/14/87", "CLINIC", "ID{index:04d}")
"""What a scanner burns into the margins (name, date of birth, clinic, patient number), drawn
into the four corners of every phantom frame outside the sector: the pixel de-identification
tests check that it is blank in the shards."""


def burned_in_text(spec: ScanSpec) -> np.ndarray:
    """[H, W] uint8: the static text layer of a scan, kept 2 pixels clear of the sector."""
    size = spec.size
    layer = Image.new("L", (size, size))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default_imagefont()  # bundled bitmap font: the same pixels everywhere
    name, birth, clinic, number = (t.format(index=spec.index) for t in BURNED_IN_TEXT)
    bottom = size - 12
    for left, top, text in (
        (True, 0, name),
        (False, 0, birth),
        (True, bottom, clinic),
        (False, bottom, number),
    ):
        # The bitmap font has no anchors: a right-aligned corner is placed by the text's width.
        x = 1 if left else size - 1 - int(draw.textlength(text, font=font))
        draw.text((x, top), text, fill=235, font=font)
    clear = ndimage.binary_dilation(_Renderer(size).sector, iterations=2)
    return np.where(clear, 0, np.asarray(layer)).astype(np.uint8)


def render_video(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W] uint8 with the burned-in text, and gaze [T, 2] in [0, 1] (x, y in image
    coordinates)."""
    rng = _rng(spec.seed, spec.index, 2)
    renderer = _Renderer(spec.size)
    text_HW = burned_in_text(spec)
    labels = frame_labels(spec)
    n = len(labels)
    frames = np.empty((n, spec.size, spec.size), np.uint8)
    gaze = np.empty((n, 2), np.float32)
    # Probe jitter: a slow random walk in position and angle, pulled back to the centre.
    pos = np.zeros(3)
    background = _background_prims(rng)
    for t in range(n):
        pos = 0.9 * pos + rng.normal(0, [0.01, 0.008, 0.02])
        if labels[t] == BACKGROUND:
            if rng.random() < 0.1:
                background = _background_prims(rng)
            prims = background
        else:
            prims = _class_anatomy(int(labels[t]))
        frames[t] = np.maximum(renderer.frame(prims, pos[0], pos[1], pos[2], rng), text_HW)
        key = prims[0]
        c, s = np.cos(-pos[2]), np.sin(-pos[2])
        kx = c * key[1] - s * key[2] + pos[0]
        ky = s * key[1] + c * key[2] + pos[1]
        gx = kx * 0.5 + 0.5 + rng.normal(0, 0.02)
        gy = ky * 1.08 - 0.08 + rng.normal(0, 0.02)
        gaze[t] = np.clip([gx, gy], 0.0, 1.0)
    return frames, gaze


def _voiced(formants: np.ndarray, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio: syllables of harmonics shaped by (F1, F2) pairs, with pauses."""
    n = int(round(seconds * rate))
    out = np.zeros(n, np.float32)
    t = 0
    f0 = rng.uniform(110, 220)
    while t < n:
        syl = int(rng.uniform(0.12, 0.25) * rate)
        gap = int(rng.uniform(0.03, 0.12) * rate)
        f1, f2 = formants[int(rng.integers(len(formants)))]
        m = min(syl, n - t)
        tt = np.arange(m) / rate
        pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * tt))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        wave = np.zeros(m, np.float32)
        for h in range(1, int(3800 / f0)):
            fh = h * f0
            amp = np.exp(-(((fh - f1) / 120) ** 2)) + 0.7 * np.exp(-(((fh - f2) / 180) ** 2)) + 0.02 / h
            wave += (amp * np.sin(h * phase)).astype(np.float32)
        env = np.sin(np.pi * np.arange(m) / max(m, 1)) ** 0.5
        out[t : t + m] = wave * env / max(np.abs(wave).max(), 1e-6)
        t += syl + gap
    return out


def render_narration(spec: ScanSpec) -> np.ndarray:
    """The scan's narration, mono float32 at spec.audio_rate, exactly as written to its mp4."""
    n = int(round(spec.seconds * spec.audio_rate))
    audio = np.zeros(n, np.float32)
    for k, seg in enumerate(spec.segments):
        rng = _rng(spec.seed, spec.index, 3, k)
        a, b = int(round(seg.start * spec.audio_rate)), int(round(seg.end * spec.audio_rate))
        if seg.narration == "plane":
            audio[a:b] = 0.5 * _voiced(
                _class_formants(seg.label), (b - a) / spec.audio_rate, spec.audio_rate, rng
            )
        elif seg.narration == "chatter":
            formants = np.stack([rng.uniform(250, 950, 4), rng.uniform(900, 3000, 4)], axis=1)
            audio[a:b] = 0.3 * _voiced(formants, (b - a) / spec.audio_rate, spec.audio_rate, rng)
    noise = _rng(spec.seed, spec.index, 4).normal(0, 1e-3, n).astype(np.float32)
    return np.clip(audio + noise, -1.0, 1.0)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv_bytes(header: list[str], rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def synthesize(
    out: Path,
    *,
    scans: int,
    seconds: float,
    seed: int,
    fps: float = 15.0,
    size: int = 128,
    audio_rate: int = 22050,
    speech_share: float = 0.8,
    scans_per_patient: int = 1,
    video_only_scans: int = 0,
    log=print,
) -> Path:
    """Write `scans` phantom scans (mp4 + labels + gaze CSVs) and manifest.csv; returns it.

    The last `video_only_scans` scans have no narration (no audio stream), as many real
    archives' cine loops; the others are the same bytes as without them.
    """
    if scans < 1 or seconds <= 0:
        raise ValueError(f"need scans >= 1 and seconds > 0, got scans={scans} seconds={seconds}")
    if scans_per_patient < 1:
        raise ValueError(f"scans_per_patient must be >= 1, got {scans_per_patient}")
    if not 0 <= video_only_scans <= scans:
        raise ValueError(f"video_only_scans must be in [0, scans={scans}], got {video_only_scans}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(scans):
        spec = make_spec(seed, i, seconds, fps, size, audio_rate, speech_share)
        frames, gaze = render_video(spec)
        audio = render_narration(spec) if i < scans - video_only_scans else None
        name = f"scan_{i:04d}"
        _write_atomic(out / f"{name}.mp4", encode_mp4(frames, fps, audio, audio_rate, audio_bitrate=96000))
        labels = frame_labels(spec)
        _write_atomic(
            out / f"{name}_labels.csv",
            _csv_bytes(["frame", "plane"], ((t, PLANES[c]) for t, c in enumerate(labels))),
        )
        _write_atomic(
            out / f"{name}_gaze.csv",
            _csv_bytes(["frame", "x", "y"], ((t, f"{x:.4f}", f"{y:.4f}") for t, (x, y) in enumerate(gaze))),
        )
        rows.append(
            (
                f"phantom-{seed}-{i:04d}",
                f"phantom-patient-{seed}-{i // scans_per_patient:04d}",
                f"{name}.mp4",
                "",
                f"{name}_labels.csv",
                f"{name}_gaze.csv",
            )
        )
        log(f"synth: scan {i + 1}/{scans} ({seconds:g} s, {len(spec.segments)} segments)")
    manifest = out / "manifest.csv"
    _write_atomic(manifest, _csv_bytes(["scan_id", "patient_id", "video", "audio", "labels", "gaze"], rows))
    return manifest
