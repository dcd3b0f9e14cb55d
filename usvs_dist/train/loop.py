"""train_loop_per_worker: what each Ray Train worker runs (reads top to bottom).

load config -> model -> DeepSpeed engine -> resume from Ray's checkpoint -> loader ->
while not done: micro-steps up to an optimizer step, log (rank 0), checkpoint + report (every rank).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch

from usvs_dist.config import from_dict
from usvs_dist.data.pipeline import train_loader
from usvs_dist.dist import collectives
from usvs_dist.dist.engine import build_engine, gathered_params
from usvs_dist.losses import check_objective
from usvs_dist.models import build_model, encoder_state_dicts
from usvs_dist.tracking import MlflowTracker, NullTracker
from usvs_dist.train.resume import RNG_DIR, latest_complete_checkpoint
from usvs_dist.train.state import TrainState
from usvs_dist.train.step import BatchViews, train_step

log = logging.getLogger(__name__)
ENGINE_TAG = "deepspeed"
ENCODERS_FILE = "encoders.pt"


def _save_rng(folder: Path, rank: int) -> None:
    (folder / RNG_DIR).mkdir(exist_ok=True)
    torch.save(
        {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        folder / RNG_DIR / f"rank_{rank}.pt",
    )


def _load_rng(folder: Path, rank: int) -> None:
    path = folder / RNG_DIR / f"rank_{rank}.pt"
    if path.is_file():  # a run resumed with more ranks than it saved keeps fresh streams there
        state = torch.load(path, weights_only=False)
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])


def _save_and_report(engine, model, state: TrainState, cfg, metrics: dict, rank: int) -> None:
    """Every rank saves its DeepSpeed shard and RNG and reports; Ray merges the folders in storage.

    A rank-0-only save would hang on DeepSpeed's barrier (DeepSpeed #797), and every rank must
    call report the same number of times.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder), tag=ENGINE_TAG)
        _save_rng(folder, rank)
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
    needs = check_objective(cfg.objective)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, needs.outputs)
    engine = build_engine(model, cfg)
    # Views, augmentations and dropout draw differently on each rank (a resume restores the state).
    torch.manual_seed(random.Random(f"{cfg.train.seed}-rank-{rank}").getrandbits(63))
    make_views = BatchViews(cfg, needs)

    state = TrainState(world_size=world)
    # The newest complete checkpoint in storage, not only the one Ray registered: a worker killed
    # right after a report can beat the registration, and a stopped driver may leave no snapshot
    # (see train/resume.py). Nothing writes to storage while a group starts, so ranks agree.
    found = latest_complete_checkpoint(loop_config["storage_path"], loop_config["run_name"])
    checkpoint = ray.train.Checkpoint(found) if found else ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            engine.load_checkpoint(folder, tag=ENGINE_TAG)
            state = TrainState.load(Path(folder))
            state.world_size = world
            _load_rng(Path(folder), rank)
        log.info("rank %d resumed at step %d", rank, state.step)

    loader, plan = train_loader(
        cfg.data,
        loop_config["shards"],
        rank,
        world,
        use_gpu=cfg.train.use_gpu,
        local_rank=ctx.get_local_rank(),
        start_epoch=state.loader_epoch,
    )
    tracker = (
        MlflowTracker(
            loop_config["tracking_uri"],
            loop_config["mlflow_run_id"],
            system_metrics=cfg.tracking.system_metrics,
            sampling_interval=cfg.tracking.system_metrics_interval,
        )
        if rank == 0
        else NullTracker()
    )
    if checkpoint is not None:
        # Visible in MLflow: where each restart of the worker group picked up.
        tracker.log_metrics({"resumed_from_step": state.step}, state.step)
    accum = cfg.train.grad_accum_steps
    global_batch = cfg.data.batch_size * world * accum
    if rank == 0:
        log.info(
            "global batch %d = %d per rank x %d ranks x %d micro-steps; %d batches per rank per epoch",
            global_batch,
            cfg.data.batch_size,
            world,
            accum,
            plan.batches_per_rank,
        )
    bad_by_worker: dict[int, int] = {}
    window: dict[str, torch.Tensor] = {}
    micro = 0
    tick = time.perf_counter()
    while state.step < cfg.train.steps:
        for batch in loader:
            lr = engine.get_lr()[0]  # the rate this optimizer step uses
            parts = train_step(engine, batch, cfg, make_views, state.step / cfg.train.steps)
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + v / accum
            for w, bad in zip(batch["worker"].tolist(), batch["bad_samples"].tolist(), strict=True):
                bad_by_worker[w] = max(bad_by_worker.get(w, 0), bad)
            micro += 1
            if micro % accum:
                continue  # DeepSpeed steps the optimizer on the accumulation boundary only
            state.step += 1
            state.samples += global_batch
            now = time.perf_counter()
            step_seconds, tick = now - tick, now
            last = state.step == cfg.train.steps
            if state.step % cfg.train.log_every == 0 or last:
                means = {k: collectives.all_reduce_mean(v).item() for k, v in window.items()}
                bad = torch.tensor(float(sum(bad_by_worker.values())), device=engine.device)
                tracker.log_metrics(
                    {
                        **means,
                        "clips_per_s": global_batch / step_seconds,
                        "lr": lr,
                        "samples_seen": state.samples,
                        "global_batch": global_batch,
                        "bad_samples": collectives.all_reduce_mean(bad).item() * world,
                    },
                    state.step,
                )
            if state.step % cfg.train.checkpoint_every == 0 or last:
                report = {"step": state.step, "loss": window["loss"].item()}
                _save_and_report(engine, model, state, cfg, report, rank)
                tick = time.perf_counter()  # saving is not a training step
            window = {}
            if last:
                break
        else:
            state.loader_epoch += 1
    tracker.close()
