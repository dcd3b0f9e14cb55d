"""train_loop_per_worker: what each Ray Train worker runs (reads top to bottom).

load config -> model -> DeepSpeed engine -> resume from Ray's checkpoint -> loader ->
while not done: step, log (rank 0), checkpoint + report (every rank).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import ray.train
import torch

from usvs_dist.config import from_dict
from usvs_dist.data.pipeline import train_loader
from usvs_dist.dist import collectives
from usvs_dist.dist.engine import build_engine, gathered_params
from usvs_dist.models import build_model, encoder_state_dicts
from usvs_dist.tracking import MlflowTracker, NullTracker
from usvs_dist.train.state import TrainState
from usvs_dist.train.step import train_step

log = logging.getLogger(__name__)
ENGINE_TAG = "deepspeed"
ENCODERS_FILE = "encoders.pt"


def _save_and_report(engine, model, state: TrainState, cfg, metrics: dict, rank: int) -> None:
    """Every rank saves its DeepSpeed shard and reports; Ray merges the folders in storage.

    A rank-0-only save would hang on DeepSpeed's barrier (DeepSpeed #797), and every rank must
    call report the same number of times.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder), tag=ENGINE_TAG)
        with gathered_params(model, cfg.train.zero_stage):
            encoders = encoder_state_dicts(model) if rank == 0 else None
        if rank == 0:
            state.save(folder)
            torch.save(encoders, folder / ENCODERS_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry of one rank; `loop_config` holds the config tree, shards and run ids."""
    cfg = from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data)
    engine = build_engine(model, cfg)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            engine.load_checkpoint(folder, tag=ENGINE_TAG)
            state = TrainState.load(Path(folder))
        log.info("rank %d resumed at step %d", rank, state.step)

    loader, plan = train_loader(
        cfg.data,
        loop_config["shards"],
        rank,
        world,
        use_gpu=cfg.train.use_gpu,
        local_rank=ctx.get_local_rank(),
    )
    tracker = (
        MlflowTracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"])
        if rank == 0
        else NullTracker()
    )
    global_batch = cfg.data.batch_size * world
    bad_by_worker: dict[int, int] = {}
    if rank == 0:
        log.info(
            "global batch %d over %d ranks; %d batches per rank per epoch",
            global_batch,
            world,
            plan.batches_per_rank,
        )

    tick = time.perf_counter()
    while state.step < cfg.train.steps:
        for batch in loader:
            parts = train_step(engine, batch, cfg.objective)
            state.step += 1
            state.samples += global_batch
            now = time.perf_counter()
            step_seconds, tick = now - tick, now
            for w, bad in zip(batch["worker"].tolist(), batch["bad_samples"].tolist(), strict=True):
                bad_by_worker[w] = max(bad_by_worker.get(w, 0), bad)
            last = state.step == cfg.train.steps
            if state.step % cfg.train.log_every == 0 or last:
                means = {k: collectives.all_reduce_mean(v).item() for k, v in parts.items()}
                bad_total = (
                    collectives.all_reduce_mean(
                        torch.tensor(float(sum(bad_by_worker.values())), device=engine.device)
                    ).item()
                    * world
                )
                tracker.log_metrics(
                    {
                        **means,
                        "clips_per_s": global_batch / step_seconds,
                        "lr": engine.get_lr()[0],
                        "samples_seen": state.samples,
                        "global_batch": global_batch,
                        "bad_samples": bad_total,
                    },
                    state.step,
                )
            if state.step % cfg.train.checkpoint_every == 0 or last:
                _save_and_report(
                    engine, model, state, cfg, {"step": state.step, "loss": parts["loss"].item()}, rank
                )
                tick = time.perf_counter()  # saving is not a training step
            if last:
                break
    tracker.close()
