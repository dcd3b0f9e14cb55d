"""train_loop_per_worker: what each Ray Train worker runs (reads top to bottom).

load config -> model -> DeepSpeed engine -> resume (engine, step, RNG, loader position) -> loader ->
while not done: micro-steps up to an optimizer step, log (rank 0), evaluate every eval.every steps
(rank 0), checkpoint + report (every rank).
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.train import CheckpointUploadMode

from usvs_dist.config import from_dict, to_yaml
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.dist import collectives
from usvs_dist.dist.engine import build_engine, gathered_params
from usvs_dist.eval.encoders import CONFIG_FILE, ENCODERS_FILE, RUN_FILE
from usvs_dist.losses import check_objective
from usvs_dist.models import build_model, encoder_state_dicts
from usvs_dist.tracking import MlflowTracker, NullTracker
from usvs_dist.train.periodic_eval import PeriodicEval
from usvs_dist.train.resume import RNG_DIR, latest_complete_checkpoint
from usvs_dist.train.state import TrainState
from usvs_dist.train.step import BatchViews, reads_narration, train_step

log = logging.getLogger(__name__)
ENGINE_TAG = "deepspeed"


def _save_rank_state(folder: Path, rank: int, loader_state: dict) -> None:
    """This rank's RNG streams and loader position (each rank's own; rank 0 saves the rest)."""
    (folder / RNG_DIR).mkdir(exist_ok=True)
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "loader": loader_state,
            # Which Ray node ran this rank (tests assert multi-node placement from it).
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        },
        folder / RNG_DIR / f"rank_{rank}.pt",
    )


def _load_rank_state(folder: Path, rank: int) -> dict:
    """Restore this rank's RNG streams; returns its saved loader state ({} if none)."""
    path = folder / RNG_DIR / f"rank_{rank}.pt"
    if not path.is_file():  # a run resumed with more ranks than it saved keeps fresh streams there
        return {}
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    return state.get("loader", {})


class LoaderProgress:
    """Where this rank's loader is inside the epoch, and its skipped/padded sample counts."""

    def __init__(self, epoch: int, world_size: int, workers: int, saved: dict):
        self.epoch, self.world_size, self.workers = epoch, world_size, workers
        same_layout = saved.get("world_size") == world_size and saved.get("workers") == workers
        if saved and saved.get("epoch") == epoch and not same_layout:
            log.warning(
                "loader position of epoch %d was saved with %s ranks x %s workers, now %d x %d: "
                "the epoch restarts from its beginning",
                epoch,
                saved.get("world_size"),
                saved.get("workers"),
                world_size,
                workers,
            )
        keep = saved.get("epoch") == epoch and same_layout
        self.positions: dict[int, tuple[int, int]] = (
            {int(w): tuple(p) for w, p in saved["positions"].items()} if keep else {}
        )
        self.bad_before = int(saved.get("bad", 0))
        self.padded_before = int(saved.get("padded", 0))
        self.bad: dict[int, int] = {}
        self.padded: dict[int, int] = {}
        self.frames: dict[int, tuple[int, int]] = {}

    def update(self, batch: dict) -> None:
        """Record the position and counters a batch carries."""
        w = int(batch["worker"])
        self.positions[w] = (int(batch["loader_pos"]), int(batch["loader_batches"]))
        self.bad[w] = int(batch["bad_samples"])
        self.padded[w] = int(batch["padded_samples"])
        self.frames[w] = (int(batch["frames_decoded"]), int(batch["frames_used"]))

    def totals(self) -> tuple[int, int]:
        """(bad samples, padded samples) of this rank over the run so far."""
        return self.bad_before + sum(self.bad.values()), self.padded_before + sum(self.padded.values())

    def frames_ratio(self) -> float:
        """Frames Decord decoded per frame used, this epoch."""
        decoded = sum(d for d, _ in self.frames.values())
        used = sum(u for _, u in self.frames.values())
        return decoded / used if used else float("nan")

    def next_epoch(self) -> None:
        """The epoch is done: positions restart, counters carry over."""
        self.bad_before, self.padded_before = self.totals()
        self.epoch += 1
        self.positions, self.bad, self.padded, self.frames = {}, {}, {}, {}

    def state(self) -> dict:
        """What the checkpoint keeps."""
        bad, padded = self.totals()
        return {
            "epoch": self.epoch,
            "world_size": self.world_size,
            "workers": self.workers,
            "positions": {str(w): list(p) for w, p in self.positions.items()},
            "bad": bad,
            "padded": padded,
        }


def _save_and_report(
    engine, model, state: TrainState, cfg, metrics: dict, rank: int, loader_state: dict, run: dict
) -> None:
    """Every rank saves its DeepSpeed shard and RNG and reports; Ray merges the folders in storage.

    A rank-0-only save would hang on DeepSpeed's barrier (DeepSpeed #797), and every rank must
    call report the same number of times.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder), tag=ENGINE_TAG)
        _save_rank_state(folder, rank, loader_state)
        with gathered_params(model, cfg.train.zero_stage):
            encoders = encoder_state_dicts(model) if rank == 0 else None
        if rank == 0:
            state.last_report = metrics
            state.save(folder)
            torch.save(encoders, folder / ENCODERS_FILE)
            # What `python -m usvs_dist.evaluate --checkpoint` needs: the architecture and the run.
            (folder / CONFIG_FILE).write_text(to_yaml(cfg))
            (folder / RUN_FILE).write_text(json.dumps(run))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def _report_finished(state: TrainState, found: str | None, rank: int) -> None:
    """Report a run that resumed at its last step again, so the driver and a Tune trial see it end.

    A driver stopped after the final checkpoint was written, but before Ray recorded it, leaves
    a rerun with nothing to train and, without this, no checkpoint in its result. The checkpoint
    is registered in place (it already lies in the run's folder) unless Ray restored it itself:
    registering one folder twice would let checkpoint rotation delete the one it keeps.
    """
    log.info("rank %d: the run already finished at step %d; reporting its last checkpoint", rank, state.step)
    metrics = state.last_report or {"step": state.step}
    registered = ray.train.get_checkpoint()
    name = found.rstrip("/").rsplit("/", 1)[-1] if found else None
    if rank != 0 or name is None or (registered and registered.path.rstrip("/").endswith("/" + name)):
        ray.train.report(metrics)  # every rank reports, the same number of times
        return
    storage = ray.train.get_context().get_storage()
    checkpoint = ray.train.Checkpoint(
        f"{storage.experiment_fs_path}/{name}", filesystem=storage.storage_filesystem
    )
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


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

    state = TrainState(world_size=world)
    saved_loader: dict = {}
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
            saved_loader = _load_rank_state(Path(folder), rank)
        log.info("rank %d resumed at step %d", rank, state.step)
        if state.step >= cfg.train.steps:
            _report_finished(state, found, rank)
            return

    loader = EpochLoader(
        cfg.data,
        loop_config["shards"],
        rank,
        world,
        use_gpu=cfg.train.use_gpu,
        local_rank=ctx.get_local_rank(),
        audio=reads_narration(needs),
    )
    make_views = BatchViews(cfg, needs, loader.vocabulary)
    progress = LoaderProgress(state.loader_epoch, world, cfg.data.loader_workers, saved_loader)
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
    periodic = PeriodicEval(cfg, loop_config["shards"]) if cfg.eval.every and rank == 0 else None
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
            loader.plan(state.loader_epoch).batches_per_rank,
        )
    window: dict[str, torch.Tensor] = {}
    micro = 0
    tick = time.perf_counter()
    while state.step < cfg.train.steps:
        for batch in loader.epoch(state.loader_epoch, progress.positions, engine.device):
            lr = engine.get_lr()[0]  # the rate this optimizer step uses
            parts = train_step(engine, batch, cfg, make_views, state.step / cfg.train.steps)
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + v / accum
            progress.update(batch)
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
                bad, padded = progress.totals()
                counts = torch.tensor(
                    [float(bad), float(padded), progress.frames_ratio()], device=engine.device
                )
                bad_mean, padded_mean, frames_ratio = collectives.all_reduce_mean(counts).tolist()
                tracker.log_metrics(
                    {
                        **means,
                        "clips_per_s": global_batch / step_seconds,
                        "lr": lr,
                        "samples_seen": state.samples,
                        "global_batch": global_batch,
                        "bad_samples": bad_mean * world,
                        "padded_samples": padded_mean * world,
                        "decode_frames_ratio": frames_ratio,
                        "loader_epoch": state.loader_epoch,
                    },
                    state.step,
                )
            evaluated: dict[str, float] = {}
            if cfg.eval.every and (state.step % cfg.eval.every == 0 or last):
                # Every rank enters: under ZeRO-3 gathering the parameters is a collective.
                with gathered_params(model, cfg.train.zero_stage):
                    if periodic is not None:
                        evaluated = periodic(model)
                        tracker.log_metrics(evaluated, state.step)
                tick = time.perf_counter()  # evaluating is not a training step
            checkpointing = state.step % cfg.train.checkpoint_every == 0 or last
            if checkpointing or evaluated or (cfg.eval.every and state.step % cfg.eval.every == 0):
                # Rank 0's report is what a Tune trial sees (its scheduler compares trials on it).
                report = {
                    "step": state.step,
                    "loss": collectives.all_reduce_mean(window["loss"]).item(),
                    **evaluated,
                }
                if checkpointing:
                    run = {
                        "mlflow_run_id": loop_config["mlflow_run_id"],
                        "tracking_uri": loop_config["tracking_uri"],
                    }
                    _save_and_report(engine, model, state, cfg, report, rank, progress.state(), run)
                else:
                    ray.train.report(report)  # every rank reports, the same number of times
                tick = time.perf_counter()  # saving is not a training step
            window = {}
            if last:
                break
        else:
            state.loader_epoch += 1
            progress.next_epoch()
    tracker.close()
