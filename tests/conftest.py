"""Shared fixtures: a tiny phantom data set and its shards, built once per session in a temp dir.

Worker processes spawned by the sharding tests import this module (for SALT), so it imports
only the standard library and pytest at the top: the builders are imported where they are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # One OpenMP thread per process (before torch is imported): the tests' tensors are tiny, and
    # on a busy 2-core machine two threads that wait for each other make a 5 s test take minutes.
    # Subprocesses inherit it; the benches set their own thread counts.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


PHANTOM = {"scans": 6, "seconds": 12.0, "seed": 3, "scans_per_patient": 2}
SALT = b"test-salt-0123456789"


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """Raw phantom scans (6 scans of 12 s, 2 scans per patient); returns the manifest."""
    from sharding.phantom import synthesize

    return synthesize(tmp_path_factory.mktemp("raw"), log=lambda *_: None, **PHANTOM)


@pytest.fixture(scope="session")
def salt_file(tmp_path_factory) -> Path:
    """A salt file for builds."""
    path = tmp_path_factory.mktemp("salt") / "salt"
    path.write_bytes(SALT)
    return path


@pytest.fixture(scope="session")
def phantom_shards(phantom_raw, salt_file, tmp_path_factory) -> Path:
    """Shards of the raw phantom: 2 s clips at 8 fps, 64 px, 5 clips per shard (uneven shards)."""
    from sharding.build import BuildOptions, build

    out = tmp_path_factory.mktemp("shards")
    build(
        phantom_raw,
        out,
        salt_file,
        BuildOptions(clip_seconds=2.0, fps=8.0, size=64, shard_clips=5, split_fractions=(0.6, 0.2, 0.2)),
        log=lambda *_: None,
    )
    return out


LUNG_CLASSES = ("covid", "bacterial_pneumonia", "regular", "viral_pneumonia")
"""A non-fetal 4-class vocabulary (lung ultrasound) for the clinical-input tests."""
LUNG_VOCABULARY_YAML = (
    "classes: [covid, bacterial_pneumonia, regular, viral_pneumonia]\n"
    "coarse: {infection: [covid, bacterial_pneumonia, viral_pneumonia], healthy: [regular]}\n"
)


def clinical_shards(out: Path, salt_file: Path, video_only_scans: int) -> Path:
    """Phantom scans relabelled into LUNG_CLASSES (plane k -> class k % 4), the last
    `video_only_scans` without narration, sharded into one train split with that vocabulary."""
    from sharding.build import BuildOptions, build
    from sharding.phantom import synthesize
    from sharding.vocabulary import read_vocabulary
    from usvs_dist.data.schema import PLANES

    manifest = synthesize(out / "raw", log=lambda *_: None, video_only_scans=video_only_scans, **PHANTOM)
    for labels in (out / "raw").glob("*_labels.csv"):
        rows = labels.read_text().splitlines()[1:]
        relabelled = [f"{f},{LUNG_CLASSES[PLANES.index(p) % 4]}" for f, p in (r.split(",") for r in rows)]
        labels.write_text("\n".join(["frame,label", *relabelled]) + "\n")
    vocabulary = out / "classes.yaml"
    vocabulary.write_text(LUNG_VOCABULARY_YAML)
    shards = out / "shards"
    build(
        manifest,
        shards,
        salt_file,
        BuildOptions(
            clip_seconds=2.0,
            fps=8.0,
            size=64,
            shard_clips=5,
            split_fractions=(1.0, 0.0, 0.0),
            vocabulary=read_vocabulary(vocabulary),
        ),
        log=lambda *_: None,
    )
    return shards


@pytest.fixture(scope="session")
def video_only_shards(salt_file, tmp_path_factory) -> Path:
    """Shards of 6 phantom scans without narration, labelled in the 4-class lung vocabulary."""
    return clinical_shards(tmp_path_factory.mktemp("video_only"), salt_file, video_only_scans=6)


@pytest.fixture(scope="session")
def mixed_shards(salt_file, tmp_path_factory) -> Path:
    """Shards of 6 phantom scans, the last 2 without narration, in the 4-class lung vocabulary."""
    return clinical_shards(tmp_path_factory.mktemp("mixed"), salt_file, video_only_scans=2)


REQUIRE_DECODERS = "USVS_TEST_REQUIRE_DECODERS"
"""Set (by .ci/run) to a comma-separated list of decoders whose tests must run, not skip."""


def decoder_or_skip(name: str) -> str:
    """`name` when this machine can decode with it; else the test skips (fails where CI requires it)."""
    from usvs_dist.data.backends import torchcodec_unusable

    why = torchcodec_unusable() if name == "torchcodec" else None
    if why is not None:
        if name in os.environ.get(REQUIRE_DECODERS, "").split(","):
            pytest.fail(f"{REQUIRE_DECODERS} requires {name}: {why}")
        pytest.skip(why)
    return name


@pytest.fixture(params=["decord", "torchcodec"])
def decoder(request) -> str:
    """Each decoder backend (`data.decoder`) in turn; TorchCodec where it and FFmpeg are installed."""
    return decoder_or_skip(request.param)
