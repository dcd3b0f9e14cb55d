"""The shards outside this project's loader: wids shard indexes, a webdataset mp4 handler (README)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import webdataset as wds

from sharding.build import wids_name
from usvs_dist.data import schema

README = Path(__file__).resolve().parents[2] / "README.md"


def _samples(tar: Path) -> int:
    return sum(1 for _ in wds.WebDataset(str(tar), shardshuffle=False))


def test_each_split_has_a_wids_index_of_its_shards(phantom_shards):
    index = json.loads((phantom_shards / schema.INDEX_NAME).read_text())
    sha = hashlib.sha256((phantom_shards / schema.INDEX_NAME).read_bytes()).hexdigest()
    for split in schema.SPLITS:
        shards = [s for s in index["shards"] if s["split"] == split]
        path = phantom_shards / wids_name(split)
        assert path.is_file() == bool(shards), split
        if not shards:
            continue
        spec = json.loads(path.read_text())
        # What wids' reader (wids_specs.resolve_dsdesc) asserts, and its kind tag.
        assert spec["__kind__"] == "wids-shard-index-v1" and spec["wids_version"] == 1
        assert spec["name"] == f"{split}-{sha[:16]}"
        assert [e["url"] for e in spec["shardlist"]] == [s["name"] for s in shards]
        for entry in spec["shardlist"]:
            assert not urlparse(entry["url"]).scheme and not entry["url"].startswith("/")  # relative
            tar = path.parent / entry["url"]  # wids resolves against the file's folder
            assert entry["nsamples"] == _samples(tar) and entry["filesize"] == tar.stat().st_size


def test_the_wids_reader_opens_it(phantom_shards, tmp_path, monkeypatch):
    wids = pytest.importorskip("wids")  # not a dependency of this project
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "cache"))
    dataset = wids.ShardListDataset(str(phantom_shards / wids_name("train")), transformations=[])
    index = json.loads((phantom_shards / schema.INDEX_NAME).read_text())
    assert len(dataset) == index["splits"]["train"]["clips"]
    assert schema.VIDEO_KEY in {k.lstrip(".") for k in dataset[len(dataset) - 1]}


def _readme_example() -> str:
    """The README's fenced python block after the `wds-example` marker."""
    match = re.search(r"<!-- wds-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its webdataset example"
    return match.group(1)


def test_the_readme_webdataset_example_decodes_clips(phantom_shards):
    index = json.loads((phantom_shards / schema.INDEX_NAME).read_text())
    first = next(s for s in index["shards"] if s["split"] == "train")
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 6
    scope = {"urls": [str(phantom_shards / first["name"])]}
    exec(code, scope)  # the example leaves its first decoded sample in `sample`
    frames = scope["sample"]["mp4"]
    meta = json.loads(scope["sample"]["json"]) if isinstance(scope["sample"]["json"], bytes) else None
    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[1:] == (64, 64, 3)
    assert frames.shape[0] == (meta or scope["sample"]["json"])[schema.META_FRAMES]
    assert frames.float().std() > 0  # pictures, not a blank buffer


def test_the_handler_leaves_other_keys_alone():
    from usvs_dist.data import decode_mp4

    assert decode_mp4(".json", b"{}") is None and decode_mp4("x.wav", b"") is None
    with pytest.raises(Exception):  # noqa: B017 (decord's own error type varies)
        decode_mp4(".mp4", b"not a video")
