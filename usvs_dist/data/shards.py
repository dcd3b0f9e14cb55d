"""Where shards are and how each is opened: local folders, globs, brace ranges, fsspec URLs
(s3://, gs://, http(s)://, ...) and `pipe:` commands.

index.json (beside the shards) gives every shard's clip count, which exact epochs need; shards
named explicitly in `data.shard_urls` are matched to it by file name.
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import braceexpand
import fsspec
import webdataset as wds

from usvs_dist.config import redact
from usvs_dist.data import schema

_TAR_NAME = re.compile(r"[^\s/'\"]+\.tar")


@dataclass(frozen=True)
class Shard:
    """One shard of the split: how to open it, its name in index.json, its clip count."""

    url: str
    name: str
    clips: int


def is_remote(location: str) -> bool:
    """True for URLs fsspec opens (s3://, gs://, http://, ...), False for local paths and file://."""
    return "://" in location and not location.startswith("file://")


EXTRAS = {"s3": "s3", "s3a": "s3"}
"""URL schemes whose fsspec backend one of this package's extras installs (pyproject.toml)."""


def open_url(url: str, mode: str = "rb"):
    """fsspec.open(url, mode), with a missing backend (s3fs for s3://) named by the install command.

    Storage options come from fsspec's usual places: the backend's own environment variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for s3fs) or FSSPEC_<PROTOCOL>_<OPTION> variables.
    """
    try:
        return fsspec.open(url, mode)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        extra = EXTRAS.get(scheme)
        how = f'pip install -e ".[{extra}]"' if extra else str(exc).splitlines()[0]
        raise ImportError(
            f"reading {scheme}:// URLs needs an fsspec backend that is not installed: {how}"
        ) from exc


def load_index(location: str | Path) -> dict:
    """index.json of a local shard folder or of a URL prefix (fsspec)."""
    location = str(location)
    if not is_remote(location):
        return schema.read_index(location.removeprefix("file://"))
    url = f"{location.rstrip('/')}/{schema.INDEX_NAME}"
    try:
        with open_url(url, "rt") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{redact(url)} does not exist (expected a folder written by `sharding build`)"
        ) from exc
    return schema.parse_index(text, redact(url))


def index_sha256(location: str | Path) -> str:
    """sha256 of the index.json bytes at a shard location (the run's data fingerprint)."""
    location = str(location)
    url = f"{location.rstrip('/')}/{schema.INDEX_NAME}"
    with open_url(
        url if is_remote(location) else str(Path(location.removeprefix("file://")) / schema.INDEX_NAME), "rb"
    ) as f:
        return hashlib.sha256(f.read()).hexdigest()


def expand_urls(patterns: list[str]) -> list[str]:
    """Brace ranges expanded everywhere, globs for local paths; order kept, duplicates refused."""
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            if not url.startswith("pipe:") and not is_remote(url) and glob.has_magic(url):
                matches = sorted(glob.glob(url.removeprefix("file://")))
                if not matches:
                    raise FileNotFoundError(f"data.shard_urls: {redact(url)!r} matches no file")
                urls.extend(matches)
            else:
                urls.append(url)
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(
                f"data.shard_urls: {redact(url)!r} is listed twice (an epoch would read it twice)"
            )
        seen.add(url)
    return urls


def shard_name(url: str) -> str:
    """The shard's file name in index.json: the last `*.tar` token of a URL or pipe command."""
    names = _TAR_NAME.findall(url)
    if not names:
        raise ValueError(f"data.shard_urls: cannot tell which shard {redact(url)!r} is (no '*.tar' in it)")
    return names[-1]


def split_shards(
    location: str | Path,
    index: dict,
    split: str,
    patterns: list[str] | None = None,
    narrated_only: bool = False,
) -> list[Shard]:
    """The split's non-empty shards: all of index.json's under `location`, or those `patterns` name.

    With `narrated_only`, a shard's clips are those with narration (the loader leaves the others
    out) and shards without any are not listed.
    """
    entries = {s["name"]: s for s in index["shards"]}

    def clips(entry: dict) -> int:
        return schema.narrated_clips(entry) if narrated_only else entry["clips"]

    if not patterns:
        base = str(location).rstrip("/")
        shards = [
            Shard(
                f"{base}/{s['name']}" if is_remote(base) else str(Path(base) / s["name"]),
                s["name"],
                clips(s),
            )
            for s in index["shards"]
            if s["split"] == split and clips(s) > 0
        ]
    else:
        shards = []
        for url in expand_urls(patterns):
            name = shard_name(url)
            entry = entries.get(name)
            if entry is None:
                raise ValueError(
                    f"data.shard_urls: shard {name} ({redact(url)}) is not in the index at "
                    f"{redact(str(location))}"
                )
            if entry["split"] != split:
                raise ValueError(
                    f"data.shard_urls: shard {name} is in split {entry['split']!r}, not data.split={split!r}"
                )
            if clips(entry) > 0:
                shards.append(Shard(url, name, clips(entry)))
    if not shards:
        which = "clips with narration" if narrated_only else "clips"
        raise ValueError(f"{redact(str(location))}: no shard of split {split!r} holds {which}")
    return shards


def open_shard(url: str) -> IO[bytes]:
    """A byte stream of one shard: webdataset's gopen for local paths and `pipe:`, fsspec otherwise."""
    if url.startswith("pipe:") or not is_remote(url):
        return wds.gopen(url)
    return open_url(url, "rb").open()
