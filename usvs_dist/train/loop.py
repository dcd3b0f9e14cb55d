"""train_loop_per_worker: what each Ray Train worker runs (reads top to bottom).

build model and engine -> resume (engine, step, RNG, loader state) -> while not done: a micro-step;
on each optimizer step log (rank 0: MLflow and a console line), evaluate every eval.every steps,
checkpoint and report.
"""

from __future__ import annotations

import logging
import os
import random

import ray.train
import torch

from usvs_dist.config import RootConfig, from_dict
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.dist.collectives import gather_strings
from usvs_dist.dist.engine import build_engine, gathered_params
from usvs_dist.losses import check_objective
from usvs_dist.models import build_model
from usvs_dist.tracking import MlflowTracker, NullTracker, Tracker
from usvs_dist.train.checkpoint import Checkpointer
from usvs_dist.train.console import ConsoleProgress
from usvs_dist.train.metrics import MetricsWindow
from usvs_dist.train.periodic_eval import PeriodicEval
from usvs_dist.train.step import BatchViews, reads_narration, train_step

log = logging.getLogger(__name__)


def _tracker(cfg: RootConfig, loop_config: dict, rank: int) -> Tracker:
    """Rank 0 logs to the run's MLflow run; the other ranks log nothing."""
    if rank != 0:
        return NullTracker()
    return MlflowTracker(
        loop_config["tracking_uri"],
        loop_config["mlflow_run_id"],
        system_metrics=cfg.tracking.system_metrics,
        sampling_interval=cfg.tracking.system_metrics_interval,
    )


def decoders_tag(described: list[str]) -> str:
    """The run's `usvs.decoder` tag from every rank's decoder: one line when they agree, else
    each rank's (`auto` settings resolve per machine)."""
    if len(set(described)) == 1:
        return described[0]
    return "; ".join(f"rank {r}: {d}" for r, d in enumerate(described))


def _evaluate(model, cfg: RootConfig, periodic: PeriodicEval | None) -> dict[str, float]:
    """eval/* metrics on rank 0; every rank enters (under ZeRO-3 gathering parameters is a collective)."""
    with gathered_params(model, cfg.train.zero_stage):
        return periodic(model) if periodic is not None else {}


def _log_plan(cfg: RootConfig, loader: EpochLoader, world: int) -> None:
    """How the global batch is made and how long an epoch is, on rank 0's console."""
    log.info(
        "global batch %d = %d per rank x %d ranks x %d micro-steps; %d batches per rank per epoch",
        cfg.data.batch_size * world * cfg.train.grad_accum_steps,
        cfg.data.batch_size,
        world,
        cfg.train.grad_accum_steps,
        loader.plan(loader.current_epoch).batches_per_rank,
    )


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry of one rank; `loop_config` holds the config tree, shards and run ids."""
    cfg = from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Which process is which rank: what an operator needs for py-spy, gdb or a kill.
    log.info("rank %d of %d runs in process %d", rank, world, os.getpid())
    needs = check_objective(cfg.objective)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, needs.outputs)
    engine = build_engine(model, cfg)
    # Views, augmentations and dropout draw differently on each rank (a resume restores the state).
    torch.manual_seed(random.Random(f"{cfg.train.seed}-rank-{rank}").getrandbits(63))
    shards = loop_config["shards"]
    # Decoding on the GPU uses the one this rank trains on (Ray may list a node's GPUs to each worker).
    on_cuda = engine.device.type == "cuda"
    gpu = (engine.device.index or 0) if on_cuda else ctx.get_local_rank()
    loader = EpochLoader(cfg.data, shards, rank, world, cfg.train.use_gpu, gpu, audio=reads_narration(needs))
    decoders = gather_strings(loader.decoder.describe())  # a collective: before rank 0 goes its own way
    checkpointer = Checkpointer(cfg, loop_config, rank, world)
    state = checkpointer.resume(engine, loader)
    if state.step >= cfg.train.steps:
        return checkpointer.report_finished(state)
    tracker = _tracker(cfg, loop_config, rank)
    if rank == 0:  # which decoder read the data, and where, on every rank
        tracker.set_tags({"usvs.decoder": decoders_tag(decoders)})
    if checkpointer.resumed:  # visible in MLflow: where each restart of the worker group picked up
        tracker.log_metrics({"resumed_from_step": state.step}, state.step)
    periodic = PeriodicEval(cfg, shards) if cfg.eval.every and rank == 0 else None
    make_views = BatchViews(cfg, needs, loader.vocabulary)
    accum = cfg.train.grad_accum_steps
    window = MetricsWindow(accum, cfg.data.batch_size * world * accum, engine.device)
    if rank == 0:
        _log_plan(cfg, loader, world)
    console = ConsoleProgress(cfg.train.steps, state.step, enabled=rank == 0 and cfg.train.console)
    for batch in loader.batches(engine.device):
        lr = engine.get_lr()[0]  # the rate this optimizer step uses
        parts = train_step(engine, batch, cfg, make_views, state.step / cfg.train.steps)
        if not window.add(parts, batch["scan"]):
            continue  # DeepSpeed steps the optimizer on the accumulation boundary only
        state.step += 1
        state.samples += window.global_batch
        last = state.step == cfg.train.steps
        if state.step % cfg.train.log_every == 0 or last:
            logged = window.summary(loader, state, lr)  # a collective: every rank computes it
            tracker.log_metrics(logged, state.step)
            console.show(state.step, logged)
        evaluating = bool(cfg.eval.every) and (state.step % cfg.eval.every == 0 or last)
        evaluated = _evaluate(model, cfg, periodic) if evaluating else {}
        if evaluated:
            tracker.log_metrics(evaluated, state.step)
        checkpointing = state.step % cfg.train.checkpoint_every == 0 or last
        if checkpointing or evaluating:
            # Rank 0's report is what a Tune trial sees (its scheduler compares trials on it).
            report = {"step": state.step, "loss": window.loss(), **evaluated}
            if checkpointing:
                checkpointer.save(engine, model, state, loader, report)
            else:
                checkpointer.report(report)
        window.restart_clock()  # evaluating and saving are not training steps
        window.clear()
        if last:
            break
    tracker.close()
