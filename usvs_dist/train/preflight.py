"""What the driver checks before Ray starts: names and recipe, the shards and the epoch plan.

Imports neither Ray nor DeepSpeed, so `python -m usvs_dist.train --dry-run` runs every check a
real run makes before `ray.init`, and `train.launch.run` calls the same functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from usvs_dist.config import ConfigError, RootConfig, redact
from usvs_dist.data import schema
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.shards import is_remote, load_index, split_shards
from usvs_dist.losses import Requirements, check_objective
from usvs_dist.models import check_names, modalities_for
from usvs_dist.models.outputs import model_inputs
from usvs_dist.train.resume import latest_complete_checkpoint
from usvs_dist.train.step import reads_narration

log = logging.getLogger(__name__)


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


def storage_path(path: str) -> str:
    """train.storage_path as Ray Train gets it: a URI as given, a local path absolute."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _is_relative_local(location: str) -> bool:
    if location.startswith("sqlite:///"):
        return not location.startswith("sqlite:////")
    return "://" not in location and not location.startswith("/")


def warn_about_job_working_dir(cfg: RootConfig) -> None:
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
    shard_count: int = 0
    """Shards the loader reads (of data.split, or those data.shard_urls lists)."""
    total_clips: int = 0
    """Clips of those shards the epoch plan draws from."""
    batches_per_rank: int = 0
    """Batches each rank reads per epoch."""
    unused_clips: int = 0
    """Clips each epoch leaves out so that every rank reads as many batches."""


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
    return CheckedData(
        shards, left_out, len(loader.shards), plan.total_clips, plan.batches_per_rank, plan.unused_clips
    )


def dry_run_summary(cfg: RootConfig, data: CheckedData | None, shards_note: str = "") -> str:
    """One paragraph on what a checked run would do (`--dry-run`); `data` is None when the shards
    were not checked (the phantom is not built yet: `shards_note` says where it would be)."""
    needs = check_config(cfg)
    t = cfg.train
    device = "GPU" if t.use_gpu else "CPU"
    encoders = ", ".join(f"model.{m}={getattr(cfg.model, m)}" for m in modalities_for(needs.outputs))
    parts = [
        f"dry run: the config is valid; objective.recipe={cfg.objective.recipe} trains {encoders}",
        f"{t.num_workers} {device} worker(s) x data.batch_size {cfg.data.batch_size} x "
        f"{t.grad_accum_steps} micro-step(s) = global batch {cfg.global_batch}, {t.steps} steps, "
        f"DeepSpeed ZeRO-{t.zero_stage}",
    ]
    if data is not None:
        parts.append(
            f"shards {redact(data.shards)}{f' ({shards_note})' if shards_note else ''}: "
            f"{data.shard_count} shard(s) of split {cfg.data.split}, {data.total_clips} clips, "
            f"{data.batches_per_rank} batches per rank per epoch ({data.unused_clips} clips left out "
            f"by the balance, {data.left_out} without narration)"
        )
    else:
        parts.append(f"{shards_note}; the shards were not checked")
    where = redact(t.storage_path)
    parts.append(
        f"checkpoints to {where}/{t.run_name or '<generated run name>'}, every {t.checkpoint_every} steps"
    )
    if t.run_name:
        found = latest_complete_checkpoint(storage_path(t.storage_path), t.run_name)
        parts.append(f"it would continue from {redact(found)}" if found else "it would start from step 0")
    parts.append(
        f"MLflow at {redact(os.environ.get('MLFLOW_TRACKING_URI') or cfg.tracking.uri)} (not contacted)"
    )
    return "; ".join(parts) + ". Ray and DeepSpeed were not started."
