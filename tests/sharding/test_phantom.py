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
