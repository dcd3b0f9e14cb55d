"""Tiny shard folders made inside a test: phantom clips re-packed into tars of chosen sizes."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from usvs_dist.data import schema
from usvs_dist.data.schema import read_index

Sample = dict[str, bytes]
"""Extension -> bytes, plus "__key__"."""


def phantom_samples(shards: Path, split: str = "train") -> list[Sample]:
    """Every sample of a split of a shard folder, in shard order."""
    index = read_index(shards)
    samples: list[Sample] = []
    for entry in index["shards"]:
        if entry["split"] != split:
            continue
        with tarfile.open(shards / entry["name"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][ext] = tar.extractfile(member).read()
    return samples


def write_shards(
    out: Path,
    template_index: dict,
    sizes: list[int],
    samples: list[Sample],
    mutate: Callable[[int, Sample], Sample | None] | None = None,
) -> Path:
    """Tars `train-{k:06d}.tar` of `sizes` clips (cycling through `samples`) and their index.json.

    `mutate(n, sample)` may alter the n-th written sample or drop it (None); index.json keeps the
    planned counts, as a shard damaged after the build would.
    """
    out.mkdir(parents=True, exist_ok=True)
    entries, n = [], 0
    for k, size in enumerate(sizes):
        name = f"train-{k:06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for _ in range(size):
                sample = dict(samples[n % len(samples)])
                sample["__key__"] = f"{sample['__key__']}{n:04d}"  # unique even when cycling
                if mutate is not None:
                    sample = mutate(n, sample)
                n += 1
                if sample is None:
                    continue
                for ext, data in sample.items():
                    if ext == "__key__":
                        continue
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        entries.append({"name": name, "split": "train", "clips": size, "seconds": 2.0 * size})
    index = {**template_index, "shards": entries}
    index["splits"] = {**index["splits"], "train": {**index["splits"]["train"], "clips": sum(sizes)}}
    (out / schema.INDEX_NAME).write_text(json.dumps(index))
    return out
