"""The training loader: one commented list of WebDataset stages (STYLE.md principle 7)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import default_collate

from usvs_dist.config.schema import DataConfig
from usvs_dist.data.decode import ClipDecoder
from usvs_dist.data.schema import read_index


@dataclass(frozen=True)
class _RankWorkerSeed:
    """worker_seed for ResampledShards: distinct per (rank, loader worker), picklable."""

    rank: int

    def __call__(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.rank * 1000 + (info.id if info is not None else 0)


class _RankShuffle(wds.PipelineStage):
    """Buffer shuffle seeded by (seed, rank, worker, epoch): reproducible, yet different per rank."""

    def __init__(self, bufsize: int, seed: int, rank: int):
        self.bufsize, self.seed, self.rank, self.epoch = bufsize, seed, rank, -1

    def run(self, src):
        self.epoch += 1
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(f"shuffle-{self.seed}-{self.rank}-{worker}-{self.epoch}")
        return wds.filters._shuffle(src, self.bufsize, min(self.bufsize, 16), rng)


@dataclass(frozen=True)
class LoaderPlan:
    """How many batches each rank and each loader worker yields per epoch."""

    split_clips: int
    batches_per_rank: int
    batches_per_worker: int


def plan_epoch(split_clips: int, batch_size: int, world_size: int, loader_workers: int) -> LoaderPlan:
    """Batches per rank per epoch, equal on every rank (else Ray's report barrier hangs)."""
    global_batch = batch_size * world_size
    if split_clips < global_batch:
        raise ValueError(
            f"the split holds {split_clips} clips, fewer than one global batch "
            f"({batch_size} x {world_size} ranks)"
        )
    workers = max(1, loader_workers)
    # with_epoch after batched counts per loader worker (webdataset #303).
    per_worker = max(1, math.ceil(split_clips // global_batch / workers))
    return LoaderPlan(split_clips, per_worker * workers, per_worker)


def train_loader(
    cfg: DataConfig,
    folder: str | Path,
    rank: int,
    world_size: int,
    use_gpu: bool = False,
    local_rank: int = 0,
    start_epoch: int = 0,
) -> tuple[wds.WebLoader, LoaderPlan]:
    """Endless, resampled stream of training batches for one rank, in epochs of equal length.

    `start_epoch` (the loader state a checkpoint keeps) seeds shard draws, shuffles and frame
    jitter as from that epoch on, so a resumed run draws fresh data rather than replaying the
    run's first epochs; the position inside an interrupted epoch is not kept.
    """
    index = read_index(folder)
    shards = [s for s in index["shards"] if s["split"] == cfg.split and s["clips"] > 0]
    if not shards:
        raise ValueError(f"{folder}: no shard of split {cfg.split!r} holds clips")
    urls = [str(Path(folder) / s["name"]) for s in shards]
    plan = plan_epoch(sum(s["clips"] for s in shards), cfg.batch_size, world_size, cfg.loader_workers)
    decoder = ClipDecoder(
        cfg,
        index["clip_seconds"],
        rank,
        train=True,
        use_gpu=use_gpu,
        local_rank=local_rank,
        epoch=start_epoch,
    )
    shard_draws = wds.ResampledShards(
        urls, seed=cfg.seed, worker_seed=_RankWorkerSeed(rank), deterministic=True
    )
    shard_draws.epoch = start_epoch - 1  # incremented as each epoch starts
    shuffle = _RankShuffle(cfg.shuffle_buffer, cfg.seed, rank)
    shuffle.epoch = start_epoch - 1
    dataset = wds.DataPipeline(
        # Shards drawn with replacement, seeded per (rank, worker): no node splitting is needed and
        # no rank ever runs dry, so all ranks step in lockstep.
        shard_draws,
        # tar -> {__key__, mp4, json}; unreadable members are logged and skipped.
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        # Shuffle raw bytes, before the costly decode.
        shuffle,
        # Decord decode, frame sampling, log-mel; bad samples are counted and dropped.
        wds.map(decoder),
        # Full batches only: the gathered losses need equal batch sizes on every rank.
        wds.batched(cfg.batch_size, partial=False, collation_fn=default_collate),
    ).with_epoch(plan.batches_per_worker)
    loader = wds.WebLoader(
        dataset, batch_size=None, num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0
    )
    return loader, plan
