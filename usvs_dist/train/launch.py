"""The driver: validate, check the shards the entry resolved, open the MLflow run, fit a TorchTrainer.

The checks before Ray starts live in train.preflight (Ray-free, shared with `--dry-run`).
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from usvs_dist.config import RootConfig, flatten, redact, redacted, to_dict, to_yaml
from usvs_dist.data.shards import index_sha256
from usvs_dist.dist.engine import deepspeed_config
from usvs_dist.eval.encoders import ENCODERS_FILE
from usvs_dist.tracking import MlflowTracker, finish_run, loss_curves, open_run, resolve_uri
from usvs_dist.tracking.datasets import log_shard_set
from usvs_dist.tracking.fallback import reachable_uri
from usvs_dist.train.loop import train_loop_per_worker
from usvs_dist.train.model_log import log_trained_model
from usvs_dist.train.preflight import CheckedData, check_data, storage_path, warn_about_job_working_dir
from usvs_dist.train.resume import latest_complete_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished run leaves behind."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    checkpoint_path: str
    metrics: dict


def run(
    cfg: RootConfig,
    log_fn=print,
    callbacks: list | None = None,
    tags: dict | None = None,
    data: CheckedData | None = None,
) -> RunResult:
    """One pretraining run end to end; raises on failure after marking the MLflow run FAILED.

    `callbacks` go to Ray Train's RunConfig (a Tune trial passes TuneReportCallback); `tags` are
    added to the MLflow run (a sweep's trials carry mlflow.parentRunId); `data` is check_data's
    result when the caller checked the shards already, else `data.shards` is checked (it must be
    set: the entries resolve an empty one to the phantom).
    """
    warn_about_job_working_dir(cfg)
    data = data or check_data(cfg, cfg.data.shards, log_fn)
    shards, left_out = data.shards, data.left_out

    run_name = cfg.train.run_name or f"usvs-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    # An unreachable server is a warning within seconds; the run then logs to a local store.
    uri = reachable_uri(resolve_uri(cfg.tracking.uri), log_fn=log_fn)
    index_sha = index_sha256(shards)
    tags = {
        "recipe": cfg.objective.recipe,
        "shard_index_sha256": index_sha,
        "git_commit": _git_commit(),
        **git_source_tags(),
        **(tags or {}),
    }
    run_id, driver_tracker = open_tracking(cfg, uri, run_name, tags)
    log_shard_set(uri, run_id, cfg.data.shards or shards, index_sha, cfg.data.split, data.total_clips)
    # How much of the split the recipe can use, beside the run's other data facts.
    driver_tracker.log_metrics({"data/clips_without_narration_left_out": left_out}, 0)
    log_fn(f"run {run_name}: MLflow run {run_id} at {redact(uri)}")

    storage = storage_path(cfg.train.storage_path)
    resume_from = latest_complete_checkpoint(storage, run_name)
    if resume_from:
        log_fn(f"run {run_name}: continuing from {resume_from}")
    if not ray.is_initialized():
        # Joins RAY_ADDRESS (or the job's cluster under `ray job submit`), else starts local Ray.
        ray.init(log_to_driver=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": to_dict(cfg),
            "shards": shards,
            "tracking_uri": uri,
            "mlflow_run_id": run_id,
            "storage_path": storage,
            "run_name": run_name,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources},
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except BaseException:
        finish_run(uri, run_id, ok=False)
        raise
    if result.checkpoint is None:
        finish_run(uri, run_id, ok=False)
        raise RuntimeError(f"run {run_name} ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        driver_tracker.log_artifact(Path(folder) / ENCODERS_FILE, "encoders")
        log_trained_model(cfg, folder, uri, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plot = loss_curves(uri, run_id, Path(tmp) / "loss.png")
        except Exception as exc:  # a plot is not worth failing a finished run
            log.warning("loss-curve plot failed: %s", exc)
            plot = None
        if plot is not None:
            driver_tracker.log_artifact(plot, "plots")
    finish_run(uri, run_id, ok=True)
    return RunResult(run_name, run_id, uri, result.checkpoint.path, dict(result.metrics or {}))


def open_tracking(cfg: RootConfig, uri: str, run_name: str, tags: dict) -> tuple[str, MlflowTracker]:
    """Open (or find) the run's MLflow run; log its params, tags and config artifacts, redacted.

    The run itself uses the real values; what MLflow shows is config.redacted(cfg) (URL
    credentials and query strings, pipe: commands, values read from the environment).
    """
    run_id = open_run(uri, cfg.tracking.experiment, run_name, flatten(redacted(cfg)), tags=tags)
    tracker = MlflowTracker(uri, run_id)
    tracker.log_text(to_yaml(redacted(cfg)), "config/resolved.yaml")
    tracker.log_text(json.dumps(redact(deepspeed_config(cfg)), indent=2), "config/deepspeed.json")
    return run_id, tracker


def git_source_tags() -> dict[str, str]:
    """`mlflow.source.git.commit` (the full hash of HEAD, which the MLflow UI shows and links),
    or nothing outside a git checkout; `git_commit` keeps the -dirty mark."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    commit = out.stdout.strip()
    return {"mlflow.source.git.commit": commit} if out.returncode == 0 and commit else {}


def _git_commit() -> str:
    """Commit of the usvs_dist source tree (with -dirty for local changes), or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
