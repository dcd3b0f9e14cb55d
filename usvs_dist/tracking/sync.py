"""`python -m usvs_dist.tracking.sync --from sqlite:///mlruns-fallback.db --to http://mlflow:5000`

Copies the runs of a local (fallback) store into another store: params, tags, every metric's
full history, dataset inputs, artifacts, status and times. Each copy carries the
`usvs.synced_from` tag (the source run id), so running it again copies only the runs not yet
there. MLflow has no built-in store-to-store copy; this is the part of one the runs here need.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from usvs_dist.config import redact

SYNCED_FROM_TAG = "usvs.synced_from"
PARENT_RUN_TAG = "mlflow.parentRunId"
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def _copy_run(src: MlflowClient, dst: MlflowClient, run, exp_id: str, copied: dict[str, str]) -> str:
    """One finished run into experiment `exp_id` of `dst`; returns the new run id. A parent run
    (a sweep's) copied before it, `copied` maps to its new id."""
    run_id = run.info.run_id
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}
    parent = tags.get(PARENT_RUN_TAG)
    if parent in copied:
        tags[PARENT_RUN_TAG] = copied[parent]
    new = dst.create_run(
        exp_id,
        start_time=run.info.start_time,
        run_name=run.info.run_name,
        tags={**tags, SYNCED_FROM_TAG: run_id},
    )
    new_id = new.info.run_id
    params = [Param(k, v) for k, v in sorted(run.data.params.items())]
    for i in range(0, len(params), _PARAMS_PER_BATCH):
        dst.log_batch(new_id, params=params[i : i + _PARAMS_PER_BATCH])
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in sorted(run.data.metrics)
        for m in src.get_metric_history(run_id, key)
    ]
    for i in range(0, len(history), _METRICS_PER_BATCH):
        dst.log_batch(new_id, metrics=history[i : i + _METRICS_PER_BATCH])
    inputs = run.inputs.dataset_inputs if run.inputs else []
    if inputs:
        dst.log_inputs(new_id, datasets=inputs)
    if src.list_artifacts(run_id):
        with tempfile.TemporaryDirectory() as tmp:
            dst.log_artifacts(new_id, src.download_artifacts(run_id, "", tmp))
    dst.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    return new_id


def sync(src_uri: str, dst_uri: str, experiments: list[str] | None = None, log_fn=print) -> dict[str, str]:
    """Copy the runs of `experiments` (all when None) from `src_uri` to `dst_uri`.

    Returns {source run id: new run id} for the runs copied this time; runs copied before
    (tagged usvs.synced_from) are skipped.
    """
    src, dst = MlflowClient(src_uri), MlflowClient(dst_uri)
    copied: dict[str, str] = {}
    for exp in src.search_experiments():
        if experiments is not None and exp.name not in experiments:
            continue
        runs = src.search_runs([exp.experiment_id], max_results=50000)
        if not runs:
            continue
        target = dst.get_experiment_by_name(exp.name)
        exp_id = target.experiment_id if target else dst.create_experiment(exp.name)
        done = {r.data.tags.get(SYNCED_FROM_TAG) for r in dst.search_runs([exp_id], max_results=50000)}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            if run.info.run_id in done:
                continue
            if run.info.status == "RUNNING":
                # Copied once, a run is never copied again: what it logs after would be lost.
                log_fn(f"{exp.name}: run {run.info.run_id} is still running; left for a later sync")
                continue
            copied[run.info.run_id] = _copy_run(src, dst, run, exp_id, copied)
            log_fn(f"{exp.name}: run {run.info.run_name} {run.info.run_id} -> {copied[run.info.run_id]}")
    return copied


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, copy, say how many runs were copied."""
    p = argparse.ArgumentParser(prog="python -m usvs_dist.tracking.sync", description=__doc__)
    p.add_argument(
        "--from", dest="src", required=True, help="source store, e.g. sqlite:///mlruns-fallback.db"
    )
    p.add_argument("--to", dest="dst", required=True, help="destination store, e.g. http://mlflow:5000")
    p.add_argument("--experiment", action="append", help="copy only this experiment (repeatable)")
    args = p.parse_args(argv)
    copied = sync(args.src, args.dst, args.experiment)
    print(f"copied {len(copied)} run(s) from {redact(args.src)} to {redact(args.dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
