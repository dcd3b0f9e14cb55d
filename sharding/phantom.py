"""The phantom data set: deterministic B-mode-like fetal 'scans' with narration, labels and gaze.

Each scan is a plan of segments over the 14 classes of usvs_format.PLANES. Every plane shows the
same four structures (a host ring, a bright disc, an anechoic cyst and a bright bar) with the same
sizes and echogenicities; a plane is defined only by their arrangement: disc and cyst inside or
outside the ring, the bar across its outline, inside it, or outside pointing at it or lying along
it (PLANE_TOPOLOGIES), at places drawn once per plane (CLASS_SEED, fixed across seeds so a plane
looks the same in every scan). What dominates the pixels is nuisance drawn per segment: where the
anatomy lies in the sector and how deep, zoom, the probe's turn, gain and depth attenuation, tissue
texture, acoustic shadows, neighbouring structures and speckle; the anatomy is often cut by the
sector's edge. Within a segment the pose and gain drift slowly (an AR(1) walk, DRIFT_SECONDS), so
frames close in time share their view, which is what self-supervision can exploit. So a randomly
initialised encoder's features do not tell planes apart (mean brightness says nothing of the
plane), and learnt ones can. Background segments show the probe searching: the same structures
without the host ring, rearranged about once a second.

Text like a scanner's (name, date of birth, clinic) is burned into the corners outside the sector.
For a share of plane segments the narration is 'about the plane': voiced syllables whose formants
are specific to the class; otherwise it is unrelated chatter (random formants) or silence. Gaze
follows the plane's key structure (the host ring's centre; while searching, the first structure).

Everything is drawn from `numpy.random.default_rng` streams derived from (seed, scan), so the same
seed gives the same arrays and, with a fixed encoder thread count, the same bytes.
"""

from __future__ import annotations

import csv
import functools
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


@dataclass(frozen=True)
class Structure:
    """One structure in anatomy coordinates: the host ring's major semi-axis is 1, its centre 0."""

    kind: str
    """'ring' (an ellipse's outline), 'disc' (a filled ellipse) or 'line' (a thin bar)."""
    x: float
    y: float
    a: float
    """Semi-axis along `angle` (a line's half length)."""
    b: float
    """The other semi-axis (a line's half thickness)."""
    angle: float
    echo: float
    """Echogenicity relative to the segment's tissue level."""


HOST_MINOR = 0.72
"""Minor/major semi-axis ratio of the host ring that every plane's other structures sit around."""
RING_INNER = 0.7
"""A ring is the part of its ellipse beyond this squared relative radius."""
REACH = 2.2
"""How far from the host's centre (in its major semi-axes) a plane's structures reach."""
# Every plane has the same four structures with the same sizes and echogenicities: (kind, semi-axis
# a, semi-axis b, echo). A plane is told from another only by where the disc, the cyst and the bar
# lie relative to the ring and to each other.
HOST = ("ring", 1.0, HOST_MINOR, 3.0)
DISC = ("disc", 0.24, 0.24, 4.5)
CYST = ("disc", 0.32, 0.26, 0.08)
BAR = ("line", 0.5, 0.09, 5.0)
PLANE_TOPOLOGIES = (
    (True, True, "across"),
    (True, False, "across"),
    (False, True, "across"),
    (False, False, "across"),
    (True, False, "inside"),
    (False, True, "inside"),
    (False, False, "inside"),
    (True, True, "radial"),
    (True, False, "radial"),
    (False, True, "radial"),
    (True, True, "tangential"),
    (True, False, "tangential"),
    (False, True, "tangential"),
)
"""Per plane: disc inside the ring, cyst inside the ring, and where the bar lies (across the
ring's outline, inside it, or outside pointing at it or lying along it). Within a topology the
places are drawn once per plane (CLASS_SEED), so planes that share one still differ."""


def _outline_point(phi: float) -> tuple[np.ndarray, np.ndarray]:
    """A point of the host's outline and the outward unit vector there (from the centre)."""
    p = np.array([np.cos(phi), HOST_MINOR * np.sin(phi)])
    return p, p / np.linalg.norm(p)


def _spot(rng: np.random.Generator, inside: bool) -> np.ndarray:
    """A centre well inside the host ring or well outside it (never on its outline)."""
    rho = rng.uniform(0.0, 0.45) if inside else rng.uniform(1.5, 1.75)
    phi = rng.uniform(-np.pi, np.pi)
    return rho * np.array([np.cos(phi), HOST_MINOR * np.sin(phi)])


def _bar(rng: np.random.Generator, place: str) -> tuple[np.ndarray, float]:
    """Centre and direction of the bar for one of the places of PLANE_TOPOLOGIES."""
    if place == "inside":
        return _spot(rng, True) * 0.6, rng.uniform(0, np.pi)
    p, n = _outline_point(rng.uniform(-np.pi, np.pi))
    radial = float(np.arctan2(n[1], n[0]))
    if place == "across":
        return p, radial
    if place == "radial":
        return p + n * (0.2 + BAR[1]), radial
    return p + n * 0.4, radial + np.pi / 2


def _segment_distance(point: np.ndarray, centre: np.ndarray, angle: float) -> float:
    d = point - centre
    u = np.array([np.cos(angle), np.sin(angle)])
    along = np.clip(d @ u, -BAR[1], BAR[1])
    return float(np.linalg.norm(d - along * u))


def _place(rng: np.random.Generator, topology: tuple[bool, bool, str]) -> list[Structure]:
    """The host ring, disc, cyst and bar in `topology`, none touching another."""
    disc_in, cyst_in, bar_place = topology
    while True:
        disc, cyst = _spot(rng, disc_in), _spot(rng, cyst_in)
        bar, angle = _bar(rng, bar_place)
        if (
            np.linalg.norm(disc - cyst) > DISC[1] + CYST[1] + 0.15
            and _segment_distance(disc, bar, angle) > DISC[1] + 0.15
            and _segment_distance(cyst, bar, angle) > CYST[1] + 0.15
        ):
            break
    return [
        Structure(HOST[0], 0.0, 0.0, HOST[1], HOST[2], 0.0, HOST[3]),
        Structure(DISC[0], *disc, DISC[1], DISC[2], 0.0, DISC[3]),
        Structure(CYST[0], *cyst, CYST[1], CYST[2], 0.0, CYST[3]),
        Structure(BAR[0], *bar, BAR[1], BAR[2], angle, BAR[3]),
    ]


@functools.cache
def _class_anatomy(label: int) -> list[Structure]:
    """The structures of plane `label` in anatomy coordinates; the first (the host ring) is its key."""
    return _place(_rng(CLASS_SEED, label), PLANE_TOPOLOGIES[label])


def _distractors(rng: np.random.Generator) -> list[Structure]:
    """Other tissue around the anatomy, beyond its reach: same kinds, random sizes and echoes."""
    out = []
    for _ in range(int(rng.integers(NUISANCE["distractors"][0], NUISANCE["distractors"][1] + 1))):
        r, phi = rng.uniform(REACH + 0.4, REACH + 2.0), rng.uniform(-np.pi, np.pi)
        kind = ("ring", "disc", "line")[int(rng.integers(3))]
        a = rng.uniform(0.25, 0.8)
        b = a * rng.uniform(0.5, 1.0) if kind != "line" else 0.07
        echo = float(rng.choice([0.08, 2.0, 3.0, 4.5]))
        out.append(Structure(kind, r * np.cos(phi), r * np.sin(phi), a, b, rng.uniform(0, np.pi), echo))
    return out


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

    def frame(self, view: View, rng: np.random.Generator) -> np.ndarray:
        """[H, W] uint8: the view's structures under its probe pose, gain, shadows and speckle."""
        c, s = np.cos(view.rot), np.sin(view.rot)
        dx, dy = self.x - view.cx, self.y - view.cy
        # Anatomy coordinates of every pixel: the probe's pose undone.
        u = (c * dx + s * dy) / view.zoom
        v = (-s * dx + c * dy) / view.zoom
        texture = 1.0 + sum(amp * np.cos(ku * u + kv * v + ph) for ku, kv, amp, ph in view.texture)
        echo = np.ones(self.x.shape, np.float32)
        for st in view.structures:
            ca, sa = np.cos(st.angle), np.sin(st.angle)
            p = (ca * (u - st.x) + sa * (v - st.y)) / st.a
            q = (-sa * (u - st.x) + ca * (v - st.y)) / st.b
            if st.kind == "line":
                inside = (np.abs(q) < 1.0) & (np.abs(p) < 1.0)
            else:
                d = p * p + q * q
                inside = (d < 1.0) & (d > RING_INNER) if st.kind == "ring" else d < 1.0
            echo = np.where(inside, st.echo, echo)
        shade = np.ones(self.x.shape, np.float32)
        for angle, half_width, start, depth in view.shadows:
            # An acoustic shadow: a dark band along the beam from `start` on, soft at its sides.
            across = np.clip(1.5 - np.abs(self.theta - angle) / half_width, 0.0, 1.0)
            shade *= 1.0 - depth * across * (self.r > start)
        tissue = view.tissue * view.gain * texture * echo * shade * np.exp(-view.attenuation * self.r)
        speckle = rng.rayleigh(0.8, self.x.shape).astype(np.float32)
        img = np.log1p(6.0 * tissue * speckle) / np.log1p(6.0 * 3.0)
        img = np.clip(img * 255.0, 0, 255) * self.sector
        return img.astype(np.uint8)

    def to_image(self, view: View, x: float, y: float) -> tuple[float, float]:
        """Image coordinates in [0, 1] of anatomy point (x, y) under the view's pose."""
        c, s = np.cos(view.rot), np.sin(view.rot)
        sx = view.cx + view.zoom * (c * x - s * y)
        sy = view.cy + view.zoom * (s * x + c * y)
        return sx * 0.5 + 0.5, sy * 1.08 - 0.08


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


@dataclass
class View:
    """What one frame shows: structures in anatomy coordinates and the probe's pose and settings."""

    structures: list[Structure]
    cx: float
    """Where the anatomy's centre lies in the sector (x in [-1, 1])."""
    cy: float
    """Its depth in the sector ([0, 1])."""
    zoom: float
    """Sector units per anatomy unit: the host ring's major semi-axis on screen."""
    rot: float
    gain: float
    tissue: float
    """Echo level of plain tissue."""
    attenuation: float
    """Depth attenuation exp(-attenuation * r): how the gain curve falls off."""
    texture: list[tuple[float, float, float, float]]
    """Slow tissue texture: (ku, kv, amplitude, phase) cosines in anatomy coordinates."""
    shadows: list[tuple[float, float, float, float]]
    """Acoustic shadows: (beam angle, half width, start depth, darkening)."""


NUISANCE = {"zoom": (0.36, 0.46), "turn": 0.25, "gain": (0.7, 1.4), "shadows": 1, "distractors": (0, 1)}
"""Ranges of what is drawn per segment: zoom (the host ring's major semi-axis in sector units),
turn of the probe (radians either way), overall gain, the most acoustic shadows, and the least
and most neighbouring structures."""
DRIFT_SECONDS = 1.5
"""Time constant of the probe's drift within a segment: frames a second apart share most of it."""
DRIFT = {"cx": 0.03, "cy": 0.03, "log_zoom": 0.05, "rot": 0.07, "log_gain": 0.1}
"""Stationary spread of each pose and gain coordinate around its segment's draw."""


class _Probe:
    """The nuisance of one segment: pose, gain, depth curve, texture, shadows and neighbouring
    tissue drawn at its start (how this sonographer found this view), then drifting slowly."""

    def __init__(self, rng: np.random.Generator, fps: float, searching: bool):
        depth = rng.uniform(0.35, 0.75)
        self.mean = {
            "cx": depth * np.tan(SECTOR_HALF_ANGLE) * rng.uniform(-0.7, 0.7),
            "cy": depth,
            "log_zoom": rng.uniform(*np.log(NUISANCE["zoom"])),
            "rot": rng.uniform(-NUISANCE["turn"], NUISANCE["turn"]),
            "log_gain": rng.uniform(*np.log(NUISANCE["gain"])),
        }
        # Searching (background) moves faster and further than holding a plane.
        self.spread = {k: s * (2.0 if searching else 1.0) for k, s in DRIFT.items()}
        self.dev = {k: s * rng.normal() for k, s in self.spread.items()}
        self.rho = float(np.exp(-1.0 / (fps * DRIFT_SECONDS * (0.4 if searching else 1.0))))
        self.tissue = rng.uniform(0.25, 0.5)
        self.attenuation = rng.uniform(0.5, 2.2)
        self.texture = [
            (k * np.cos(d), k * np.sin(d), rng.uniform(0.05, 0.15), rng.uniform(0, 2 * np.pi))
            for k, d in zip(rng.uniform(1.5, 5.0, 3), rng.uniform(0, np.pi, 3), strict=True)
        ]
        self.shadows = [
            [rng.uniform(-0.5, 0.5), rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.7), rng.uniform(0.4, 0.85)]
            for _ in range(int(rng.integers(0, NUISANCE["shadows"] + 1)))
        ]
        self.distractors = _distractors(rng)

    def step(self, rng: np.random.Generator) -> None:
        """One frame of drift (an AR(1) walk around the segment's draw)."""
        keep = np.sqrt(1.0 - self.rho**2)
        for k, s in self.spread.items():
            self.dev[k] = self.rho * self.dev[k] + s * keep * rng.normal()
        for shadow in self.shadows:
            shadow[0] += 0.01 * rng.normal()

    def view(self, structures: list[Structure]) -> View:
        """The current frame's view of `structures` with this segment's neighbouring tissue."""
        at = {k: self.mean[k] + self.dev[k] for k in self.mean}
        return View(
            structures + self.distractors,
            at["cx"],
            at["cy"],
            float(np.exp(at["log_zoom"])),
            at["rot"],
            float(np.exp(at["log_gain"])),
            self.tissue,
            self.attenuation,
            self.texture,
            [tuple(s) for s in self.shadows],
        )


def _search_layout(rng: np.random.Generator) -> list[Structure]:
    """What the probe passes over while searching: a plane's disc, cyst and bar without its ring."""
    return _place(rng, PLANE_TOPOLOGIES[int(rng.integers(N_PLANES))])[1:]


def render_video(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W] uint8 with the burned-in text, and gaze [T, 2] in [0, 1] (x, y in image
    coordinates) on the key structure: a plane's host ring, else the first structure in view."""
    rng = _rng(spec.seed, spec.index, 2)
    renderer = _Renderer(spec.size)
    text_HW = burned_in_text(spec)
    labels = frame_labels(spec)
    n = len(labels)
    times = np.arange(n) / spec.fps
    segment_of = np.searchsorted([s.start for s in spec.segments], times, side="right") - 1
    frames = np.empty((n, spec.size, spec.size), np.uint8)
    gaze = np.empty((n, 2), np.float32)
    probe, current, searched = None, -1, []
    for t in range(n):
        searching = labels[t] == BACKGROUND
        if segment_of[t] != current:
            current = int(segment_of[t])
            probe = _Probe(rng, spec.fps, searching)
            searched = _search_layout(rng)
        else:
            probe.step(rng)
        if searching and rng.random() < 1.0 / spec.fps:  # about once a second, something else
            searched = _search_layout(rng)
        structures = searched if searching else _class_anatomy(int(labels[t]))
        view = probe.view(structures)
        frames[t] = np.maximum(renderer.frame(view, rng), text_HW)
        gx, gy = renderer.to_image(view, structures[0].x, structures[0].y)
        gaze[t] = np.clip(np.array([gx, gy]) + rng.normal(0, 0.02, 2), 0.0, 1.0)
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
