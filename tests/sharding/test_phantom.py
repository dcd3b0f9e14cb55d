"""Phantom data set: determinism, per-frame tables, and narration that depends on the plane."""

from __future__ import annotations

import csv

import numpy as np

from sharding.phantom import make_spec, render_narration, synthesize
from usvs_dist.data.schema import BACKGROUND, PLANES


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = {"scans": 2, "seconds": 4.0, "log": lambda *_: None}
    a = _files(synthesize(tmp_path / "a", seed=5, **kw).parent)
    b = _files(synthesize(tmp_path / "b", seed=5, **kw).parent)
    c = _files(synthesize(tmp_path / "c", seed=6, **kw).parent)
    assert a == b
    assert a["scan_0000.mp4"] != c["scan_0000.mp4"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


def test_manifest_labels_and_gaze_cover_every_frame(tmp_path):
    manifest = synthesize(
        tmp_path, scans=3, seconds=6.0, seed=1, fps=10.0, scans_per_patient=2, log=lambda *_: None
    )
    rows = list(csv.DictReader(manifest.open()))
    assert [r["patient_id"] for r in rows] == ["phantom-patient-1-0000"] * 2 + ["phantom-patient-1-0001"]
    for row in rows:
        labels = list(csv.DictReader((tmp_path / row["labels"]).open()))
        gaze = list(csv.DictReader((tmp_path / row["gaze"]).open()))
        assert len(labels) == len(gaze) == 60
        assert {r["plane"] for r in labels} <= set(PLANES)
        xy = np.array([[float(r["x"]), float(r["y"])] for r in gaze])
        assert xy.min() >= 0 and xy.max() <= 1
    assert len(PLANES) == 14 and PLANES[BACKGROUND] == "background"


def _spectrum(audio: np.ndarray, rate: int) -> np.ndarray:
    frames = audio[: len(audio) // 1024 * 1024].reshape(-1, 1024)
    mag = np.abs(np.fft.rfft(frames * np.hanning(1024), axis=1)).mean(axis=0)
    freqs = np.fft.rfftfreq(1024, 1 / rate)
    return np.log(mag[(freqs > 200) & (freqs < 3500)] + 1e-6)


def test_plane_narration_is_specific_to_the_plane():
    rate = 16000
    by_label: dict[int, list[np.ndarray]] = {}
    for scan in range(12):
        spec = make_spec(0, scan, 60.0, 10.0, 64, rate, speech_share=1.0)
        audio = render_narration(spec)
        for seg in spec.segments:
            if seg.narration == "plane" and seg.end - seg.start > 2.5:
                part = audio[int(seg.start * rate) : int(seg.end * rate)]
                by_label.setdefault(seg.label, []).append(_spectrum(part, rate))
    same, other = [], []
    labels = [k for k, v in by_label.items() if len(v) >= 2]
    assert len(labels) >= 4
    for a in labels:
        for b in labels:
            for i, x in enumerate(by_label[a]):
                for j, y in enumerate(by_label[b]):
                    if a == b and i < j:
                        same.append(np.corrcoef(x, y)[0, 1])
                    elif a < b:
                        other.append(np.corrcoef(x, y)[0, 1])
    assert np.mean(same) > np.mean(other) + 0.1


def test_speech_share_zero_gives_no_plane_narration():
    spec = make_spec(0, 0, 60.0, 10.0, 64, 16000, speech_share=0.0)
    assert {s.narration for s in spec.segments} <= {"chatter", "silence"}
    assert any(s.label != BACKGROUND for s in spec.segments)


def test_the_default_phantoms_patients_fall_in_every_split():
    """Periodic retrieval reads val and held-out evaluation test, by eval.folds folds of scans:
    the quickstart's phantom (its salt, seed, scan count and split shares) must put a patient in
    train and val, and eval.folds patients in test."""
    from collections import Counter

    from sharding.deid import assign_split, hash_id
    from usvs_dist.config import load_config
    from usvs_dist.phantom import PHANTOM_SALT

    cfg = load_config(None, [])
    phantom = cfg.phantom
    splits = Counter(
        assign_split(
            hash_id(PHANTOM_SALT, "patient", f"phantom-patient-{phantom.seed}-{i:04d}"),
            tuple(phantom.split_fractions),
        )
        for i in range(phantom.scans)
    )
    assert splits["train"] >= 5 and splits["val"] >= 1
    assert cfg.eval.plane_splits == ["test"] and splits["test"] >= cfg.eval.folds


def test_every_plane_has_the_same_structures_in_its_own_arrangement():
    from sharding.phantom import N_PLANES, _class_anatomy

    def parts(label):
        return sorted((s.kind, s.a, s.b, s.echo) for s in _class_anatomy(label))

    def places(label):
        return np.array([(s.x, s.y) for s in _class_anatomy(label)])

    assert all(parts(label) == parts(0) for label in range(N_PLANES))
    for a in range(N_PLANES):
        for b in range(a):
            # Some structure sits elsewhere relative to the host ring (ring sizes of the disc).
            assert np.abs(places(a) - places(b)).max() > 0.3, (a, b)


def _segment_frames(scans: int, seconds: float, fps: float, size: int):
    from sharding.phantom import _Renderer, render_video

    sector = _Renderer(size).sector
    for scan in range(scans):
        spec = make_spec(0, scan, seconds, fps, size, 16000, 0.8)
        frames, _ = render_video(spec)
        times = np.arange(len(frames)) / fps
        for seg in spec.segments:
            rows = (times >= seg.start) & (times < seg.end)
            if seg.label != BACKGROUND and rows.sum() >= 2:
                yield seg.label, frames[rows], sector


def test_brightness_tells_nothing_of_the_plane_nuisance_dominates():
    """Segment mean brightness varies within a plane (gain, depth, shadows) more than between planes'
    averages; the phantom before this one gave each plane its own echogenicities (ratio ~7)."""
    means: dict[int, list[float]] = {}
    for label, frames, sector in _segment_frames(6, 60.0, 2.0, 32):
        means.setdefault(label, []).append(float(frames[:, sector].mean()))
    plane_means = np.array([np.mean(v) for v in means.values()])
    within = np.sqrt(np.mean([np.var(v) for v in means.values() if len(v) > 1]))
    assert len(means) >= 10 and within > 5.0
    assert plane_means.std() < 1.5 * within


def test_neighbouring_frames_of_a_segment_share_their_anatomy():
    """The nuisance drifts slowly within a segment: frames 0.25 s apart look alike (speckle blurred
    away), two segments of the same plane much less so."""
    from scipy import ndimage

    def smooth(frame, sector):
        # Inside the sector only: its fan outline alone would make any two frames alike.
        return ndimage.uniform_filter(frame.astype(np.float32), 5)[sector]

    near, apart, first = [], [], {}
    for label, frames, sector in _segment_frames(4, 40.0, 4.0, 64):
        near.append(np.corrcoef(smooth(frames[0], sector), smooth(frames[1], sector))[0, 1])
        if label in first:
            apart.append(np.corrcoef(first[label], smooth(frames[0], sector))[0, 1])
        first.setdefault(label, smooth(frames[0], sector))
    assert len(apart) >= 2
    print(f"near {np.mean(near):.3f}, apart {np.mean(apart):.3f}")
    assert np.mean(near) > 0.8 and np.mean(near) > np.mean(apart) + 0.3
