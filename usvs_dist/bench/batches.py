"""`bench batches [SHARDS]`: how many in-batch pairs share a scan, the loader against uniform sampling.

The loader's global batches are rebuilt from its epoch plan without decoding a frame: each
stream's read order over its units, cut into batches, rank batch k taken from worker k % workers
(the DataLoader's round robin), global batch k the ranks' batch k side by side. Each clip's scan
comes from its json. Uniform sampling's share is the exact expectation for the same split.
The tar bytes the streams read per byte of the split measure the I/O cost of the plan.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter

from usvs_dist.config import load_config
from usvs_dist.data import schema
from usvs_dist.data.epoch import EpochPlan, read_order, read_stream, shard_samples
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.scan_mix import same_scan_pair_share, uniform_same_scan_share


def _raise(exc: Exception) -> bool:
    raise exc


def _kept(loader: EpochLoader):
    """The loader's keep predicate on raw samples (narrated clips only when it reads narration)."""
    if not loader.audio:
        return None
    return lambda sample: schema.narrated(json.loads(sample[schema.META_KEY]))


def split_scans(loader: EpochLoader) -> list[str]:
    """Scan id of every clip of the split the loader may read (shard order)."""
    return [
        json.loads(sample[schema.META_KEY])[schema.META_SCAN]
        for shard in loader.shards
        for sample in shard_samples(shard, _raise, _kept(loader))
    ]


def stream_scans(loader: EpochLoader, plan: EpochPlan, stream: int) -> list[str]:
    """Scan ids of the clips one stream reads this epoch, in its read order."""
    units = plan.streams[stream]
    order = read_order(units, loader.cfg.interleave, f"{loader.cfg.seed}-{plan.epoch}-{stream}")
    samples = read_stream(loader.shards, units, order, 0, _raise, _kept(loader))
    return [json.loads(sample[schema.META_KEY])[schema.META_SCAN] for _, sample in samples]


def global_batches(loaders: list[EpochLoader], epoch: int = 0) -> list[list[str]]:
    """The scan ids of every global batch of `epoch`, rank batches side by side."""
    plan = loaders[0].plan(epoch)
    size, workers = plan.batch_size, plan.workers
    per_rank = []
    for rank, loader in enumerate(loaders):
        streams = [stream_scans(loader, plan, rank * workers + w) for w in range(workers)]
        batches = [
            streams[k % workers][(k // workers) * size : (k // workers + 1) * size]
            for k in range(plan.batches_per_rank)
        ]
        per_rank.append(batches)
    return [sum((rank[k] for rank in per_rank), []) for k in range(plan.batches_per_rank)]


def tar_bytes_ratio(loader: EpochLoader, plan: EpochPlan) -> float:
    """Tar bytes all streams read per byte of the split (a unit reads its shard to its last clip)."""
    size = {i: os.path.getsize(s.url) for i, s in enumerate(loader.shards)}
    read = sum(size[u.shard] for stream in plan.streams for u in stream)
    return read / sum(size.values())


def run(location: str | None, overrides: list[str], world_size: int, epochs: int) -> None:
    """Print the same-scan pair share of the loader's global batches and of uniform sampling."""
    from usvs_dist.phantom import resolve_shards

    cfg = load_config(None, overrides)
    shards = location or resolve_shards(cfg)
    loaders = [EpochLoader(cfg.data, shards, r, world_size, audio=True) for r in range(world_size)]
    clips_per_scan = Counter(split_scans(loaders[0]))
    uniform = uniform_same_scan_share(clips_per_scan.values())
    shares = []
    start = time.perf_counter()
    for epoch in range(epochs):
        batches = global_batches(loaders, epoch)
        shares += [same_scan_pair_share(b) for b in batches]
    read_seconds = time.perf_counter() - start
    plan = loaders[0].plan(0)
    loader_share = statistics.fmean(shares)
    print(
        f"split {cfg.data.split}: {sum(clips_per_scan.values())} clips of {len(clips_per_scan)} scans in "
        f"{len(loaders[0].shards)} shards; {world_size} ranks x {plan.workers} workers, global batch "
        f"{plan.batch_size * world_size}, {len(shares)} batches over {epochs} epoch(s)"
    )
    print(
        f"loader   same_scan_pair_share={loader_share:.4f} (per batch {min(shares):.3f}..{max(shares):.3f})"
    )
    print(f"uniform  same_scan_pair_share={uniform:.4f} (expected)")
    clips = len(shares) * plan.batch_size * world_size
    print(
        f"tar_bytes_read_per_split_byte={tar_bytes_ratio(loaders[0], plan):.2f} "
        f"(reading the tars without decoding: {clips / read_seconds:.0f} clips/s in one process)"
    )
    print(f"same_scan_ratio={loader_share / uniform:.2f}")
