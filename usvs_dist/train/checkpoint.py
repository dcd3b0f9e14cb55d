"""Checkpointer: one rank's save, report, resume and encoder export under Ray Train.

A checkpoint folder holds DeepSpeed's shards (`deepspeed/`), each rank's RNG streams and loader
state (`rng/rank_R.pt`), and from rank 0 the TrainState, the encoders' weights, the resolved
config and the MLflow run (what `python -m usvs_dist.evaluate --checkpoint` reads).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.train import CheckpointUploadMode

from usvs_dist.config import RootConfig, to_yaml
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.dist.engine import gathered_params
from usvs_dist.eval.encoders import CONFIG_FILE, ENCODERS_FILE, RUN_FILE
from usvs_dist.models import encoder_state_dicts
from usvs_dist.train.resume import RNG_DIR, latest_complete_checkpoint
from usvs_dist.train.state import TrainState

log = logging.getLogger(__name__)
ENGINE_TAG = "deepspeed"


def save_rank_state(folder: Path, rank: int, loader_state: dict) -> None:
    """This rank's RNG streams and loader state (each rank's own; rank 0 saves the rest)."""
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


def load_rank_state(folder: Path, rank: int) -> dict:
    """Restore this rank's RNG streams; returns its saved loader state ({} if none)."""
    path = folder / RNG_DIR / f"rank_{rank}.pt"
    if not path.is_file():  # a run resumed with more ranks than it saved keeps fresh streams there
        return {}
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    return state.get("loader", {})


class Checkpointer:
    """Saves and reports this rank's checkpoints and resumes from the newest complete one."""

    def __init__(self, cfg: RootConfig, loop_config: dict, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.storage_path, self.run_name = loop_config["storage_path"], loop_config["run_name"]
        self.run = {
            "mlflow_run_id": loop_config["mlflow_run_id"],
            "tracking_uri": loop_config["tracking_uri"],
        }
        self.found: str | None = None
        """The checkpoint found in storage at resume, if any."""
        self.resumed = False

    def resume(self, engine, loader: EpochLoader) -> TrainState:
        """Load engine, RNG and loader state from the newest complete checkpoint; a fresh state if none.

        The newest in storage, not only the one Ray registered: a worker killed right after a
        report can beat the registration, and a stopped driver may leave no snapshot (see
        train/resume.py). Nothing writes to storage while a group starts, so ranks agree.
        """
        self.found = latest_complete_checkpoint(self.storage_path, self.run_name)
        checkpoint = ray.train.Checkpoint(self.found) if self.found else ray.train.get_checkpoint()
        if checkpoint is None:
            return TrainState(world_size=self.world_size)
        with checkpoint.as_directory() as folder:
            engine.load_checkpoint(folder, tag=ENGINE_TAG)
            state = TrainState.load(Path(folder))
            # A rank the saved run did not have starts the epoch every other rank is in.
            loader.load_state_dict(load_rank_state(Path(folder), self.rank) or {"epoch": state.loader_epoch})
        state.world_size = self.world_size
        self.resumed = True
        log.info("rank %d resumed at step %d", self.rank, state.step)
        return state

    def save(self, engine, model, state: TrainState, loader: EpochLoader, metrics: dict) -> None:
        """Every rank saves its DeepSpeed shard, RNG and loader state and reports; Ray merges the folders.

        A rank-0-only save would hang on DeepSpeed's barrier (DeepSpeed #797), and every rank must
        call report the same number of times.
        """
        state.loader_epoch = loader.current_epoch
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            engine.save_checkpoint(str(folder), tag=ENGINE_TAG)
            save_rank_state(folder, self.rank, loader.state_dict())
            with gathered_params(model, self.cfg.train.zero_stage):
                encoders = encoder_state_dicts(model) if self.rank == 0 else None
            if self.rank == 0:
                state.last_report = metrics
                state.save(folder)
                torch.save(encoders, folder / ENCODERS_FILE)
                (folder / CONFIG_FILE).write_text(to_yaml(self.cfg))
                (folder / RUN_FILE).write_text(json.dumps(self.run))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

    def report(self, metrics: dict) -> None:
        """Report without a checkpoint (every rank, the same number of times as the others)."""
        ray.train.report(metrics)

    def report_finished(self, state: TrainState) -> None:
        """Report a run that resumed at its last step again, so the driver and a Tune trial see it end.

        A driver stopped after the final checkpoint was written, but before Ray recorded it, leaves
        a rerun with nothing to train and, without this, no checkpoint in its result. The checkpoint
        is registered in place (it already lies in the run's folder) unless Ray restored it itself:
        registering one folder twice would let checkpoint rotation delete the one it keeps.
        """
        log.info(
            "rank %d: the run already finished at step %d; reporting its last checkpoint",
            self.rank,
            state.step,
        )
        metrics = state.last_report or {"step": state.step}
        registered = ray.train.get_checkpoint()
        name = self.found.rstrip("/").rsplit("/", 1)[-1] if self.found else None
        if (
            self.rank != 0
            or name is None
            or (registered and registered.path.rstrip("/").endswith("/" + name))
        ):
            ray.train.report(metrics)
            return
        storage = ray.train.get_context().get_storage()
        checkpoint = ray.train.Checkpoint(
            f"{storage.experiment_fs_path}/{name}", filesystem=storage.storage_filesystem
        )
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD
        )
