"""The shard-format contract (version 1) shared by `sharding` (writer) and the loader (reader).

Standard library only, and importing neither `sharding` nor `usvs_dist`: both packages import
it, so neither imports the other for it. docs/architecture.md "Shard format v1, as written" is
the prose form of what is fixed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__version__ = "0.1.0"
"""Version of the tools (index.json `tool_version`; `usvs_dist.__version__` is this)."""

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
META_NARRATION = "narration"
"""False for a clip of a scan without narration (its mp4 has no audio stream); absent in shards
written before video-only scans existed, whose clips all have narration."""

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
"""The 14 standard-plane classes (13 planes + background; docs/methods.md), in label order."""
BACKGROUND = PLANES.index("background")
ANATOMIES = ("heart", "abdomen", "femur", "brain", "kidneys", "face", "spine", "background")
"""Coarse anatomy classes (awcl2022's coarse granularity), in label order."""
PLANE_ANATOMY = (0, 0, 1, 2, 3, 4, 0, 5, 5, 0, 3, 6, 6, 7)
"""ANATOMIES index of each PLANES entry: 3vt, 4ch, lvot and rvot are heart; lips and profile face."""


@dataclass(frozen=True)
class Vocabulary:
    """A data set's label classes (index.json `labels`), with an optional coarse grouping.

    `coarse_of[k]` is the coarse class of fine class k (awcl2022's planes -> anatomies);
    `background` names the class that is no anatomy (the search between planes), if any.
    """

    classes: tuple[str, ...]
    coarse: tuple[str, ...] = ()
    coarse_of: tuple[int, ...] = ()
    background: str | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("a label vocabulary needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("a label vocabulary lists a class twice")
        if self.coarse_of and (
            len(self.coarse_of) != len(self.classes)
            or not all(0 <= c < len(self.coarse) for c in self.coarse_of)
        ):
            raise ValueError("a coarse grouping must give every class one of its coarse classes")
        if self.background is not None and self.background not in self.classes:
            raise ValueError("the background class of a label vocabulary must be one of its classes")

    @property
    def background_index(self) -> int | None:
        """Index of the background class, or None."""
        return None if self.background is None else self.classes.index(self.background)

    def to_json(self) -> dict:
        """The vocabulary as index.json's `labels` section holds it (without the clip counts)."""
        out: dict = {"vocabulary": list(self.classes), "background": self.background}
        if self.coarse_of:
            out["coarse"] = {"classes": list(self.coarse), "of": list(self.coarse_of)}
        return out


FETAL_PLANES = Vocabulary(PLANES, ANATOMIES, PLANE_ANATOMY, "background")
"""The default vocabulary: the 14 fetal standard-plane classes grouped into anatomies."""


def label_vocabulary(index: dict) -> Vocabulary:
    """The vocabulary index.json declares (shards of before custom vocabularies: the fetal planes)."""
    labels = index.get("labels") or {}
    classes = labels.get("vocabulary")
    if classes is None:
        return FETAL_PLANES
    coarse = labels.get("coarse")
    if coarse is None and tuple(classes) == PLANES and "background" not in labels:
        return FETAL_PLANES  # written before the coarse grouping was recorded
    return Vocabulary(
        tuple(classes),
        tuple(coarse["classes"]) if coarse else (),
        tuple(coarse["of"]) if coarse else (),
        labels.get("background"),
    )


def narrated(meta: dict) -> bool:
    """True when a clip's json says it has narration (clips of older shards always do)."""
    return bool(meta.get(META_NARRATION, True))


def narrated_clips(shard: dict) -> int:
    """Clips with narration in one of index.json's shard entries."""
    return int(shard.get("narrated_clips", shard["clips"]))


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
