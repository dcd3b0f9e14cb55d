"""The shard-format contract (version 1) shared by `sharding` (writer) and the loader (reader).

Import-light on purpose (standard library only): ../shared/DESIGN.md "Shard format" is the
prose form of what is fixed here.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "val", "test")
AUDIO_RATE = 16000
"""Narration in every clip is mono at this rate."""

VIDEO_KEY = "mp4"
"""Sample key of the clip: H.264 video (grey in luma) plus the narration as an audio stream."""
META_KEY = "json"
"""Sample key of the clip's metadata (the META_* fields below)."""

META_SCAN = "scan"
META_PATIENT = "patient"
META_T0 = "t0"
META_T1 = "t1"
META_FPS = "fps"
META_FRAMES = "frames"
META_SPEECH_RATIO = "speech_ratio"
META_LOUDNESS = "loudness_dbfs"
META_LABELS = "labels"
META_GAZE = "gaze"

PLANES = (
    "3vt",
    "4ch",
    "abdomen",
    "femur",
    "brain_tv",
    "kidneys",
    "lvot",
    "lips",
    "profile",
    "rvot",
    "brain_tc",
    "spine_cor",
    "spine_sag",
    "background",
)
"""The 14 standard-plane classes (13 planes + background) of ../shared/METHODS.md, in label order."""
BACKGROUND = PLANES.index("background")
ANATOMIES = ("heart", "abdomen", "femur", "brain", "kidneys", "face", "spine", "background")
"""Coarse anatomy classes (seed 003's coarse granularity), in label order."""
PLANE_ANATOMY = (0, 0, 1, 2, 3, 4, 0, 5, 5, 0, 3, 6, 6, 7)
"""ANATOMIES index of each PLANES entry: 3vt, 4ch, lvot and rvot are heart; lips and profile face."""


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`: `{split}-{index:06d}.tar`."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return f"{split}-{index:06d}.tar"


def sample_key(scan_hash: str, t0_seconds: float) -> str:
    """Sample key `{scan_hash}_{t0_ms:09d}`; no dots, which WebDataset reads as extensions."""
    return f"{scan_hash}_{round(t0_seconds * 1000):09d}"


def parse_index(text: str, source: str) -> dict:
    """index.json text, checked for the format version this code reads; `source` names it in errors."""
    try:
        index = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        found = index.get("format_version") if isinstance(index, dict) else None
        raise ValueError(f"{source}: format_version {found!r}, expected {FORMAT_VERSION}")
    return index


def read_index(folder: str | Path) -> dict:
    """index.json of a local shard folder, checked for the format version this code reads."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a folder written by `sharding build`)")
    return parse_index(path.read_text(), str(path))
