"""The driver: validate, check the shards the entry resolved, open the MLflow run, fit a TorchTrainer."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from usvs_dist.config import ConfigError, RootConfig, flatten, redact, redacted, to_dict, to_yaml
from usvs_dist.data import schema
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.shards import index_sha256, is_remote, load_index, split_shards
from usvs_dist.dist.engine import deepspeed_config
from usvs_dist.eval.encoders import ENCODERS_FILE
from usvs_dist.losses import Requirements, check_objective
from usvs_dist.models import check_names, modalities_for
from usvs_dist.models.outputs import model_inputs
from usvs_dist.tracking import MlflowTracker, finish_run, loss_curves, open_run, resolve_uri
from usvs_dist.tracking.datasets import log_shard_set
from usvs_dist.tracking.fallback import reachable_uri
from usvs_dist.train.loop import train_loop_per_worker
from usvs_dist.train.model_log import log_trained_model
from usvs_dist.train.resume import latest_complete_checkpoint
from usvs_dist.train.step import reads_narration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished run leaves behind."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    checkpoint_path: str
    metrics: dict


def check_config(cfg: RootConfig) -> Requirements:
    """Checks needing the registries (config/ is the leaf and cannot see them); what the recipe reads.

    Raises ConfigError naming the key.
    """
    check_run_name(cfg)
    needs = check_objective(cfg.objective)
    check_names(cfg.model, modalities_for(needs.outputs))
    pretext = cfg.objective.pretext
    if "pretext_clips" in model_inputs(needs.outputs) and cfg.data.num_frames < pretext.subclips:
        raise ConfigError(
            f"config key {cfg.data.key('num_frames')}={cfg.data.num_frames} is invalid: the pretext view "
            f"cuts clips into {pretext.key('subclips')}={pretext.subclips} sub-clips of at least one frame"
        )
    return needs


def check_run_name(cfg: RootConfig) -> None:
    """train.run_name names the run's Ray storage folder and its MLflow run: one path component.

    Quotes and spaces are fine (the MLflow lookup quotes them); path separators, control
    characters, '.'/'..' and names longer than MLflow's 250-character run names are not.
    """
    name = cfg.train.run_name
    if not name:
        return  # generated
    bad = (
        "/" in name
        or "\\" in name
        or name in (".", "..")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name) > 250
        or name != name.strip()
    )
    if bad:
        raise ConfigError(
            f"config key {cfg.train.key('run_name')}={name[:80]!r} is invalid: expected one folder name "
            "(no '/' or '\\', no control characters, no leading or trailing spaces, not '.' or '..', "
            "at most 250 characters)"
        )


def check_labels(needs: Requirements, index: dict, shards: str | Path, recipe: str) -> None:
    """A recipe reading plane labels fails before any worker starts when the shards have none."""
    if not needs.needs_labels:
        return
    labelled = index.get("labels", {}).get("clips_with_labels", 0)
    total = index.get("totals", {}).get("clips", 0)
    if labelled == 0:
        raise ConfigError(
            f"objective.recipe={recipe} needs plane labels, but the shards in {redact(str(shards))} "
            "have none "
            "(index.json labels.clips_with_labels = 0); shard scans with a labels file"
        )
    if labelled < total:
        log.warning(
            "%d of %d clips have no plane labels: they get instance positives only", total - labelled, total
        )


def check_narration(
    needs: Requirements,
    index: dict,
    split: str,
    shards: str | Path,
    recipe: str,
    names: set[str] | None = None,
) -> int:
    """Clips of `split` (of the shards `names`, when data.shard_urls lists some) that a recipe
    reading the narration leaves out (those without); raises when it would keep none.
    Video-only recipes use every clip (0 left out)."""
    if not reads_narration(needs):
        return 0
    entries = [s for s in index["shards"] if s["split"] == split and (names is None or s["name"] in names)]
    clips = sum(s["clips"] for s in entries)
    narrated = sum(schema.narrated_clips(s) for s in entries)
    if clips and narrated == 0:
        raise ConfigError(
            f"objective.recipe={recipe} reads the narration, but data.split={split} of "
            f"{redact(str(shards))} has "
            f"0 clips with narration and {clips} without (scans sharded without audio); train a recipe "
            "that reads no audio (isbi2020, awcl2022, or custom terms without audio) or shard scans "
            "with narration"
        )
    return clips - narrated


def _storage_path(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _is_relative_local(location: str) -> bool:
    if location.startswith("sqlite:///"):
        return not location.startswith("sqlite:////")
    return "://" not in location and not location.startswith("/")


def _warn_about_job_working_dir(cfg: RootConfig) -> None:
    """Under `ray job submit --working-dir`, the cwd is a temporary copy deleted with the cluster."""
    if "working_dir_files" not in os.getcwd():
        return
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    relative = [
        key
        for key, location in (("train.storage_path", cfg.train.storage_path), ("tracking.uri", tracking))
        if _is_relative_local(location)
    ]
    if relative:
        log.warning(
            "running in a Ray job's temporary working dir %s: %s resolve inside it and are lost "
            "with the cluster; give absolute paths on shared storage (see README)",
            os.getcwd(),
            ", ".join(relative),
        )


def read_shard_index(cfg: RootConfig, shards: str) -> tuple[str, dict]:
    """(absolute folder or URL, index.json) of the run's shards; one-line ConfigError naming
    data.shards, its value as given and what was expected when the location cannot be read."""
    given = f"config key {cfg.data.key('shards')}={redact(cfg.data.shards or shards)!r}"
    if not is_remote(shards):
        shards = str(Path(shards.removeprefix("file://")).expanduser().resolve())
    try:
        return shards, load_index(shards)
    except ImportError as exc:  # an fsspec backend missing (s3fs for s3://)
        raise ConfigError(f"{given}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{given}: no index.json there (expected a folder or URL prefix written by `sharding build`)"
        ) from exc
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # unknown protocol, refused connection, bad JSON, ...
        reason = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        # parse_index names the file it read; the key and value the user gave say that already.
        for source in (f"{shards.rstrip('/')}/{schema.INDEX_NAME}", str(Path(shards) / schema.INDEX_NAME)):
            reason = reason.removeprefix(f"{redact(source)}: ")
        raise ConfigError(
            f"{given}: cannot read its index.json ({reason}; expected a folder or URL prefix written "
            "by `sharding build`)"
        ) from exc


@dataclass(frozen=True)
class CheckedData:
    """The run's shards, checked against its recipe before Ray starts."""

    shards: str
    """Absolute shard folder or URL."""
    left_out: int
    """Clips of the split without narration, which a recipe reading it leaves out."""
    clips: int = 0
    """Clips of the split (of the listed shards, with data.shard_urls) the epoch plan counts."""


def check_data(cfg: RootConfig, shards: str | Path, log_fn=print) -> CheckedData:
    """Check the run's shards and the epoch plan against the recipe: labels when it reads them,
    narration when it reads it. Raises ValueError or FileNotFoundError naming the key and what
    was found, before any worker starts.

    `shards` is `data.shards`, or the phantom shards an entry resolved an empty one to
    (`usvs_dist.phantom.resolve_shards`): the driver itself never builds shards.
    """
    needs = check_config(cfg)
    if not shards:
        raise ConfigError(
            f"config key {cfg.data.key('shards')} is empty: give a shard folder or URL "
            "(the entries, e.g. `python -m usvs_dist.train`, build the phantom shards for an empty one)"
        )
    shards, index = read_shard_index(cfg, str(shards))
    check_labels(needs, index, shards, cfg.objective.recipe)
    listed = (
        {s.name for s in split_shards(shards, index, cfg.data.split, list(cfg.data.shard_urls))}
        if cfg.data.shard_urls
        else None
    )
    left_out = check_narration(needs, index, cfg.data.split, shards, cfg.objective.recipe, listed)
    if left_out:
        log_fn(
            f"data: {left_out} clips of split {cfg.data.split} have no narration and are left out "
            f"(objective.recipe={cfg.objective.recipe} reads it)"
        )
    # The loader a rank would build: shard list, index and epoch plan are checked before Ray starts.
    loader = EpochLoader(
        cfg.data, shards, rank=0, world_size=cfg.train.num_workers, audio=reads_narration(needs)
    )
    plan = loader.plan(0)
    log_fn(
        f"epoch: {plan.batches_per_rank} batches per rank from {len(loader.shards)} shards; "
        f"{plan.unused_clips} of {plan.total_clips} clips left out by the balance (others each epoch)"
    )
    return CheckedData(shards, left_out, plan.total_clips)


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
    _warn_about_job_working_dir(cfg)
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
    log_shard_set(uri, run_id, cfg.data.shards or shards, index_sha, cfg.data.split, data.clips)
    # How much of the split the recipe can use, beside the run's other data facts.
    driver_tracker.log_metrics({"data/clips_without_narration_left_out": left_out}, 0)
    log_fn(f"run {run_name}: MLflow run {run_id} at {redact(uri)}")

    storage_path = _storage_path(cfg.train.storage_path)
    resume_from = latest_complete_checkpoint(storage_path, run_name)
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
            "storage_path": storage_path,
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
            storage_path=storage_path,
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
