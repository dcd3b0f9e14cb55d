"""Shared fixtures: a tiny phantom data set and its shards, built once per session in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharding.build import BuildOptions, build
from sharding.phantom import synthesize
from usvs_dist.dist.collectives import free_port  # noqa: F401  (tests import it from here)

PHANTOM = {"scans": 6, "seconds": 12.0, "seed": 3, "scans_per_patient": 2}
SALT = b"test-salt-0123456789"


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """Raw phantom scans (6 scans of 12 s, 2 scans per patient); returns the manifest."""
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
    out = tmp_path_factory.mktemp("shards")
    build(
        phantom_raw,
        out,
        salt_file,
        BuildOptions(clip_seconds=2.0, fps=8.0, size=64, shard_clips=5, split_fractions=(0.6, 0.2, 0.2)),
        log=lambda *_: None,
    )
    return out
