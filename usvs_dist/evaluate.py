"""`python -m usvs_dist.evaluate (--run RUN_ID | --checkpoint PATH) [--task T ...] [key=value ...]`.

Scores a pretraining run's exported encoders on the downstream tasks (plane detection: linear
probe and fine-tuning; gaze saliency; cross-modal retrieval) against randomly initialised
encoders of the same architecture and, when model.video_weights / image_weights / audio_weights
name local files (the run's, or set here: `model.image_weights=resnet18.pth`), against encoders
initialised from them; prints the report and logs it to the evaluated MLflow run.

Plane detection and saliency read the held-out scans of eval.plane_splits (default: test), or
a separate labelled shard set given by --shards (its index may hold only some splits); a set
of more than eval.max_clips clips is sampled evenly over its scans (seeded by eval.seed).
report.md lists the scans used by their hashed ids, never a path. Needs neither Ray nor
DeepSpeed. Runs on CUDA when there is a device (--device, eval.device), shows progress per task
and fold on stderr (--quiet: none). Exit status 2 on bad arguments (--device cuda without CUDA
too), 1 when a task cannot run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from usvs_dist.config import ConfigError, EvalConfig, TrackingConfig, apply_overrides, redact
from usvs_dist.config.describe import HelpFormatter, describe
from usvs_dist.config.schema import choice_fields

# torch and the evaluation modules are imported where they are used, after the arguments are
# parsed: `--help` and a bad argument answer without the seconds their imports take.
if TYPE_CHECKING:
    import torch

    from usvs_dist.eval.clips import ClipSet
    from usvs_dist.eval.encoders import Encoders

log = logging.getLogger("usvs_dist.evaluate")

TASK_NAMES = ("planes", "saliency", "retrieval")
"""The names of usvs_dist.eval.tasks.TASKS, in its order (a test keeps the two equal): `--task`
lists them without importing torch."""


OVERRIDABLE_KEYS = ("eval.", "data.", "model.video_weights", "model.image_weights", "model.audio_weights")
"""Keys an evaluation may override on top of the run's config: the architecture stays the run's;
model.*_weights only name the files of the weights-init baseline."""
OVERRIDABLE = tuple(k if k.endswith(".") else f"{k}=" for k in OVERRIDABLE_KEYS)
"""What an override `key=value` starts with when its key is one of OVERRIDABLE_KEYS."""


def _load(args, tmp: Path) -> tuple[Encoders, str | None, str | None]:
    """(encoders, MLflow tracking URI, run id) from --run or --checkpoint."""

    from usvs_dist.trained import load_trained

    trained = load_trained(
        args.run, args.checkpoint, config=args.config, tracking_uri=args.tracking_uri, dest=tmp
    )
    return trained.encoders, trained.tracking_uri, trained.run_id


def other_shards_note(uri: str, run_id: str, location: str) -> str | None:
    """Why the shards at `location` are not the ones MLflow run `run_id` trained on (its
    `shard_index_sha256` tag against index.json's sha256 now), or None when they are (or the
    run does not say). Their held-out split may then hold scans the run trained on: a phantom
    built by another version, or a shard set rebuilt since."""
    from mlflow.tracking import MlflowClient

    from usvs_dist.data.shards import index_sha256

    try:
        trained = MlflowClient(uri).get_run(run_id).data.tags.get("shard_index_sha256")
    except Exception as exc:  # an unreachable store: the check is skipped, saying so
        log.warning("could not read the run's shard set from MLflow: %s", redact(str(exc).splitlines()[0]))
        return None
    if not trained:
        return None
    try:
        now = index_sha256(location)
    except (OSError, ValueError) as exc:  # evaluation itself reports an unreadable index
        log.warning("could not compare the shards with the run's: %s", redact(str(exc).splitlines()[0]))
        return None
    if trained == now:
        return None
    return (
        f"these shards (index.json sha256 {now[:12]}…) are not the ones run {run_id} trained on "
        f"({trained[:12]}…): rebuilt since, or a phantom of another version, so the held-out scans "
        "may include scans it trained on; give its shards with --shards to compare like with like"
    )


def _baselines(enc: Encoders, init: Encoders | None) -> list[str]:
    """The report's lines on the baselines: which weights init, and what it leaves out."""
    from usvs_dist.eval.encoders import weights_files

    lines = [f"random init: the same architecture, seeded by eval.seed={enc.cfg.eval.seed}"]
    if init is None:
        lines.append(
            "no weights-init baseline: model.video_weights, model.image_weights and "
            "model.audio_weights are empty (set one to a local file here to add it)"
        )
        return lines
    files = weights_files(enc.cfg, list(init.encoders))
    named = ", ".join(f"{m} encoder from {Path(f).name}" for m, f in files.items())
    lines.append(f"{init.source}: {named}; projection heads random")
    missing = [m for m in enc.encoders if m not in init.encoders]
    if missing:
        lines.append(
            f"{init.source} leaves out the {', '.join(missing)} encoder(s) (no model.*_weights file): "
            "a task needing one shows — in that column"
        )
    return lines


def evaluate(
    enc: Encoders,
    location: str,
    which: list[str],
    protocols: tuple[str, ...],
    out: Path,
    device: torch.device | None = None,
    notes: list[str] = (),
) -> dict:
    """Run the tasks on the pretrained encoders and the baselines (random twin; weights twin when
    model.*_weights name files) on `device` (default: eval.device; `enc` is moved there); returns
    metrics, gains, each task's wall seconds per encoder set ("seconds": {task: {side: s}}, clip
    loading and figures left out), the report (`notes` as warnings at its top) and the written
    files."""
    from usvs_dist.eval import progress, report, tasks
    from usvs_dist.eval.device import resolve_device
    from usvs_dist.eval.encoders import random_twin, weights_twin

    cfg = enc.cfg
    device = resolve_device(cfg.eval.device) if device is None else device
    enc.to(device)
    baselines = {"random": random_twin(enc).to(device)}
    init = weights_twin(enc)
    if init is not None:
        baselines["init"] = init.to(device)
    results: dict[str, dict[str, float]] = {"pretrained": {}, **{side: {} for side in baselines}}
    seconds: dict[str, dict[str, float]] = {}
    sets: dict[str, str] = {}
    loaded: dict[str, ClipSet] = {}
    figures: list[Path] = []
    for name, task in tasks.TASKS.items():
        if name not in which:
            continue
        source = task.clips
        if source.label not in loaded:
            loaded[source.label] = source.load(cfg, location, cfg.eval.max_clips)
            sets[source.label] = source.describe(loaded[source.label], cfg)
        clips = loaded[source.label]
        for side, e in (("pretrained", enc), *baselines.items()):
            if side == "init" and not task.runs_on(e):
                continue  # a modality without a weights file: left out of that column
            progress.note(f"{name}, {side} encoders on {device.type}: started")
            start = time.perf_counter()
            metrics, drawn = task.run(e, clips, protocols)
            seconds.setdefault(name, {})[side] = time.perf_counter() - start
            progress.note(f"{name}, {side} encoders: done in {seconds[name][side]:.1f} s")
            results[side].update(metrics)
            if side == "pretrained" and task.figures is not None:
                figures += task.figures(drawn, clips, out)
    used = {label: clips.by_split() for label, clips in loaded.items() if clips.split}
    text = report.markdown(
        results["pretrained"],
        results["random"],
        enc.source,
        sets,
        results.get("init"),
        init_label=init.source if init is not None else "weights init",
        baselines=_baselines(enc, init),
        used=used,
        seconds=seconds,
    )
    text = "".join(f"> **Warning:** {note}\n\n" for note in notes) + text
    # Atomic: an interrupted evaluation must not leave a cut report that is logged later.
    partial = out / ".report.md.tmp"
    partial.write_text(text)
    os.replace(partial, out / "report.md")
    found = {
        **results,
        "seconds": seconds,
        "gain": report.gains(results["pretrained"], results["random"]),
        "report": text,
        "files": [out / "report.md", *figures],
    }
    if init is not None:
        found["gain_init"] = report.gains(results["pretrained"], results["init"])
    return found


def main(argv: list[str] | None = None) -> int:
    """CLI entry; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m usvs_dist.evaluate",
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="keys an evaluation may override (eval.key=value) on top of the run's config (the defaults "
        "shown are the built-in ones; the run's config may hold others):\n\n"
        + describe(keep=OVERRIDABLE_KEYS),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a pretraining run")
    src.add_argument("--checkpoint", help="a training checkpoint folder (or an encoders.pt with --config)")
    p.add_argument("--config", help="the run's resolved config, when --checkpoint is a bare encoders.pt")
    p.add_argument("--task", action="append", choices=TASK_NAMES, help="repeatable; default: all three")
    p.add_argument(
        "--protocol",
        action="append",
        choices=("linear", "finetune"),
        help="protocols of plane detection and saliency; default both",
    )
    p.add_argument(
        "--shards",
        help="shard folder or URL to evaluate on, e.g. a separate labelled set of evaluation scans "
        "(its index may hold only some splits; pick them with eval.plane_splits / "
        "eval.retrieval_split); default: the run's data.shards (or its phantom cache)",
    )
    p.add_argument(
        "--tracking-uri",
        default=TrackingConfig.uri,
        help="MLflow store of --run (MLFLOW_TRACKING_URI wins)",
    )
    p.add_argument("--out", default="eval_out", help="folder for report.md and figures")
    p.add_argument("--no-log", action="store_true", help="do not log to the evaluated MLflow run")
    p.add_argument(
        "--device",
        choices=choice_fields(EvalConfig)["device"][0],
        help="where encoders, probes and fine-tuning run (bf16 autocast on cuda); default: eval.device "
        "(auto: cuda when there is one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="eval.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from usvs_dist.eval import progress
    from usvs_dist.eval.device import resolve_device

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for item in args.overrides:
            if not item.startswith(OVERRIDABLE):
                raise ConfigError(
                    f"override {item!r}: only eval.*, data.* and model.{{video,image,audio}}_weights "
                    "can change at evaluation"
                )
        with tempfile.TemporaryDirectory() as tmp:
            enc, uri, run_id = _load(args, Path(tmp))
        enc.cfg = apply_overrides(enc.cfg, args.overrides)
        if args.device:
            device = resolve_device(args.device, "--device")
        else:
            device = resolve_device(enc.cfg.eval.device)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    location = args.shards or enc.cfg.data.shards
    log.info("evaluating on %s", device)
    try:
        if not location:
            from usvs_dist.phantom import ensure_phantom_shards  # the run trained on the phantom

            location = str(ensure_phantom_shards(enc.cfg.phantom, log=print))
        notes = []
        if run_id and uri and not args.shards and (note := other_shards_note(uri, run_id, location)):
            log.warning(note)
            notes.append(note)
        with progress.shown(not args.quiet):
            result = evaluate(
                enc,
                location,
                args.task or list(TASK_NAMES),
                tuple(args.protocol or ("linear", "finetune")),
                out,
                device,
                notes,
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result["report"])
    if run_id and not args.no_log:
        from usvs_dist.tracking import MlflowTracker

        tracker = MlflowTracker(uri, run_id)
        tracker.log_metrics(
            {
                **{f"downstream/{k}": v for k, v in result["pretrained"].items()},
                **{f"downstream_random/{k}": v for k, v in result["random"].items()},
                **{f"downstream_gain/{k}": v for k, v in result["gain"].items()},
                **{f"downstream_init/{k}": v for k, v in result.get("init", {}).items()},
                **{f"downstream_gain_init/{k}": v for k, v in result.get("gain_init", {}).items()},
                # What each task cost, all encoder sets together.
                **{f"downstream_time/{k}_s": sum(v.values()) for k, v in result["seconds"].items()},
            },
            0,
        )
        for path in result["files"]:
            tracker.log_artifact(path, "downstream")
        tracker.close()
        print(f"logged to MLflow run {run_id} at {redact(uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
