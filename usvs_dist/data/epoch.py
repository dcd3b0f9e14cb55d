"""Exact, resumable epochs: which clips each (rank, loader worker) stream reads, in what order.

A plan is a pure function of (shard clip counts, epoch, seed, ranks, workers, batch size):
1. shuffle the shards by (seed, epoch);
2. cut each shard into interleaved units (sample ordinal % parts), its `parts` in proportion to
   its clips, so that every stream gets about `stream_units` units (`data.interleave`) or more:
   a stream whose units come from many shards holds many scans, so its batches do not hold runs
   of one scan's adjacent clips (shards store each scan's clips consecutively). The price is
   I/O: a unit reads its shard's tar up to its last clip, so each shard is read about `parts`
   times (bench batches prints it);
3. split by node: units go to ranks, largest first to the least loaded (balanced by clips);
4. split by worker: each rank's units go to its loader workers the same way;
5. every stream yields the same number of batches: floor(smallest stream's clips / batch).
   Clips beyond that in larger streams are not used this epoch (reported; the next epoch's
   shuffle leaves out others). Without resampling no clip is read twice in an epoch.
A stream reads its units in `interleave` lanes, one unit per lane open at a time, drawing the
next clip from a lane chosen with probability proportional to the clips it has left (seeded by
seed, epoch, stream): a uniformly random merge of the lanes, so a batch's clips come from them as
a uniform draw of the stream would take them. The order is fixed by the plan alone, so
a position (clips read) restores a stream: units finished before it are never opened again.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import webdataset as wds

from usvs_dist.data.shards import Shard, open_shard


@dataclass(frozen=True)
class Unit:
    """Part `part` of `parts` of shard `shard`: its samples whose ordinal % parts == part."""

    shard: int
    part: int
    parts: int
    clips: int


@dataclass(frozen=True)
class EpochPlan:
    """Units per stream (index rank * workers + worker) and the batches every stream yields."""

    epoch: int
    streams: tuple[tuple[Unit, ...], ...]
    workers: int
    batch_size: int
    batches_per_stream: int
    total_clips: int

    @property
    def batches_per_rank(self) -> int:
        """Batches each rank yields this epoch (the same on every rank)."""
        return self.batches_per_stream * self.workers

    @property
    def unused_clips(self) -> int:
        """Clips of the split not read this epoch (balance remainder; with resampling, may be < 0)."""
        return self.total_clips - len(self.streams) * self.batches_per_stream * self.batch_size


def _balance(units: list[Unit], bins: int) -> list[list[Unit]]:
    """Largest first into the least-loaded bin (ties: lower bin); stable for equal sizes."""
    out: list[list[Unit]] = [[] for _ in range(bins)]
    load = [0] * bins
    for unit in sorted(units, key=lambda u: -u.clips):
        b = min(range(bins), key=lambda k: (load[k], k))
        out[b].append(unit)
        load[b] += unit.clips
    return out


def plan_epoch(
    shard_clips: list[int],
    epoch: int,
    seed: int,
    world_size: int,
    workers: int,
    batch_size: int,
    resample: bool = False,
    stream_units: int = 1,
) -> EpochPlan:
    """The epoch's plan; raises ValueError when a stream would get less than one batch."""
    workers = max(1, workers)
    streams = world_size * workers
    total = sum(shard_clips)
    rng = random.Random(f"epoch-{seed}-{epoch}")
    order = list(range(len(shard_clips)))
    rng.shuffle(order)
    # Every shard is cut in proportion to its clips (a shard ten times larger gives ten times the
    # units), so no stream ends up with one big shard's clips alone; at least one unit per stream.
    wanted = streams * max(1, stream_units)
    floor = -(-streams // len(order))
    parts = {s: max(1, floor, -(-shard_clips[s] * wanted // max(1, total))) for s in order}
    units = [
        Unit(s, j, parts[s], len(range(j, shard_clips[s], parts[s])))
        for s in order
        for j in range(parts[s])
        if len(range(j, shard_clips[s], parts[s])) > 0
    ]
    if resample:
        # Each stream draws units with replacement up to its share of the split.
        share = total // streams
        per_stream = []
        for _ in range(streams):
            drawn, clips = [], 0
            while clips < share:
                unit = rng.choice(units)
                drawn.append(unit)
                clips += unit.clips
            per_stream.append(drawn)
    else:
        per_stream = [w for r in _balance(units, world_size) for w in _balance(r, workers)]
    smallest = min(sum(u.clips for u in s) for s in per_stream)
    batches = smallest // batch_size
    if batches < 1:
        raise ValueError(
            f"the split's {total} clips in {len(shard_clips)} shards give a stream only {smallest} clips, "
            f"less than data.batch_size={batch_size}, with {world_size} ranks x {workers} loader workers; "
            "use fewer data.loader_workers, a smaller batch, or more data"
        )
    return EpochPlan(epoch, tuple(tuple(s) for s in per_stream), workers, batch_size, batches, total)


def read_order(units: tuple[Unit, ...], interleave: int, seed: str) -> list[int]:
    """Unit index of every clip the stream reads, in order, with at most `interleave` units open.

    The units are dealt into `interleave` lanes (each to the lane with the fewest clips so far),
    a lane reading its units one after another; each next clip comes from a lane drawn with
    probability proportional to the clips it has left. That is a uniformly random merge of the
    lanes, so any stretch of the order (a batch) draws from the lanes in proportion to their
    sizes, up to the stream's last clip; drawing among open units alone would leave the units
    opened last to fill the end of the epoch on their own.
    """
    lanes: list[list[int]] = [[] for _ in range(max(1, min(interleave, len(units))))]
    left = [0] * len(lanes)
    for u, unit in enumerate(units):
        k = min(range(len(lanes)), key=lambda j: (left[j], j))
        lanes[k].append(u)
        left[k] += unit.clips
    remaining = [u.clips for u in units]
    current = [0] * len(lanes)
    rng = random.Random(seed)
    order: list[int] = []
    while any(left):
        k = rng.choices(range(len(lanes)), weights=left)[0]
        while remaining[lanes[k][current[k]]] == 0:  # the lane's unit is done: its next one opens
            current[k] += 1
        unit = lanes[k][current[k]]
        order.append(unit)
        remaining[unit] -= 1
        left[k] -= 1
    return order


def _unit_samples(
    shard: Shard,
    unit: Unit,
    skip: int,
    handler: Callable[[Exception], bool],
    keep: Callable[[dict], bool] | None = None,
) -> Iterator[dict]:
    """The unit's samples in shard order, the first `skip` of them read past without yielding.

    With `keep`, samples it refuses are not part of the shard at all (e.g. clips without
    narration for a recipe that reads it): units are cut from, and positions count, the rest.
    """
    try:
        fileobj = open_shard(shard.url)
    except Exception as exc:  # unreachable storage, missing file: the handler logs and counts it
        exc.args = (*exc.args, shard.url)
        if handler(exc):
            return
        raise
    try:
        files = wds.tariterators.tar_file_expander([{"url": shard.url, "stream": fileobj}], handler=handler)
        ordinal = kept = 0
        for sample in wds.tariterators.group_by_keys(files, handler=handler):
            if keep is not None and not keep(sample):
                continue
            mine = ordinal % unit.parts == unit.part
            ordinal += 1
            if not mine:
                continue
            kept += 1
            if kept > skip:
                yield sample
    finally:
        fileobj.close()


def shard_samples(
    shard: Shard, handler: Callable[[Exception], bool], keep: Callable[[dict], bool] | None = None
) -> Iterator[dict]:
    """Every sample of one shard (that `keep` accepts), in order (errors go to `handler`)."""
    return _unit_samples(shard, Unit(0, 0, 1, shard.clips), 0, handler, keep)


def read_stream(
    shards: list[Shard],
    units: tuple[Unit, ...],
    order: list[int],
    start: int,
    handler: Callable[[Exception], bool],
    keep: Callable[[dict], bool] | None = None,
) -> Iterator[tuple[int, dict | None]]:
    """(position after it, sample or None when the unit ran out early) from position `start` on;
    `keep` as in the units' reads."""
    consumed = Counter(order[:start])
    last_use = {u: pos for pos, u in enumerate(order)}
    readers: dict[int, Iterator[dict]] = {}
    for pos in range(start, len(order)):
        u = order[pos]
        if u not in readers:
            unit = units[u]
            readers[u] = _unit_samples(shards[unit.shard], unit, consumed[u], handler, keep)
        sample = next(readers[u], None)
        if pos == last_use[u]:
            readers.pop(u).close()  # the unit's file is closed as soon as it is done
        yield pos + 1, sample
