"""A Ray Tune sweep whose trials are whole training runs, with one MLflow parent run and a child
run per trial (tag mlflow.parentRunId).

Each trial is a function that applies its parameters to the base config and calls the training
driver (`train.launch.run`), which fits a TorchTrainer with its own workers; Train's
TuneReportCallback forwards rank 0's reports (every eval.every steps: loss and the periodic
evaluation) to Tune, where ASHA compares trials at `step` milestones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from usvs_dist.config import (
    ConfigError,
    apply_overrides,
    env_sources,
    from_dict,
    redact,
    redacted,
    to_dict,
    to_yaml,
)
from usvs_dist.tracking import MlflowTracker, finish_run, mark_stopped_trials, open_run, resolve_uri
from usvs_dist.tracking.fallback import reachable_uri
from usvs_dist.train.launch import run as train_run
from usvs_dist.tune.space import Sweep, tune_space

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"


def _trial(params: dict, *, base: dict, env: dict, sweep_name: str, parent_run_id: str) -> None:
    """One trial: a full training run named after the trial, nested under the sweep's run.

    `env`: the base's env_sources, so the trial's run logs those keys redacted too.
    """
    cfg = apply_overrides(from_dict(base, env), params)
    trial = tune.get_context().get_trial_id()
    cfg.train.run_name = f"{sweep_name}-{trial}"
    train_run(
        cfg,
        log_fn=log.info,
        callbacks=[TuneReportCallback()],
        tags={PARENT_TAG: parent_run_id, "usvs.sweep": sweep_name, "usvs.trial": trial},
    )


def _search_alg(sweep: Sweep):
    if sweep.search != "optuna":
        return None  # grid and random are the param_space's own sampling
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # optuna is optional
        raise RuntimeError("sweep.search=optuna needs optuna: pip install optuna") from exc
    return OptunaSearch(metric=sweep.metric, mode=sweep.mode)


def run_sweep(sweep: Sweep, storage_path: str, resume: bool = False, print_fn=print) -> dict:
    """Run (or with `resume`, continue) the sweep; returns the best trial's params and metric.

    The base's `data.shards` must be set: `python -m usvs_dist.tune` resolves an empty one to the
    phantom shards (`usvs_dist.phantom.resolve_shards`) before calling this.
    """
    base = sweep.base
    if not base.data.shards:
        raise ConfigError(
            f"config key {base.data.key('shards')} of the sweep's base is empty: resolve it first "
            "(usvs_dist.phantom.resolve_shards builds the phantom shards)"
        )
    base.train.storage_path = str(Path(base.train.storage_path).expanduser().resolve())
    # Probed once here: trials run in other working directories, and each falling back on its own
    # would scatter the sweep over per-trial stores its parent run cannot see.
    uri = reachable_uri(resolve_uri(base.tracking.uri), workdir=base.train.storage_path)
    base.tracking.uri = uri
    parent = open_run(
        uri,
        base.tracking.experiment,
        sweep.name,
        {f"space.{k}": json.dumps(v.to_json()) for k, v in sweep.space.items()}
        | {"search": sweep.search, "metric": sweep.metric, "mode": sweep.mode},
        tags={"usvs.sweep": sweep.name, "recipe": base.objective.recipe},
    )
    tracker = MlflowTracker(uri, parent)
    tracker.log_text(to_yaml(redacted(base)), "config/base.yaml")
    if not ray.is_initialized():
        ray.init(log_to_driver=True, runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}})
    trainable = tune.with_parameters(
        _trial, base=to_dict(base), env=env_sources(base), sweep_name=sweep.name, parent_run_id=parent
    )
    # The trial function drives its Train run (its workers reserve their own resources); it
    # holds sweep.trial_cpus so that concurrent trials cannot starve worker-group start.
    trainable = tune.with_resources(trainable, {"CPU": sweep.trial_cpus})
    scheduler = (
        ASHAScheduler(
            time_attr="step",
            # Past the last report, so a trial that survives every rung ends by returning (and
            # closes its MLflow run) rather than being stopped at its final step.
            max_t=base.train.steps + 1,
            grace_period=sweep.asha.grace_period,
            reduction_factor=sweep.asha.reduction_factor,
        )
        if sweep.asha is not None
        else None
    )
    experiment = Path(storage_path).expanduser().resolve() / sweep.name
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise FileNotFoundError(f"--resume: no sweep to continue at {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(sweep.space),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
                scheduler=scheduler,
                search_alg=_search_alg(sweep),
            ),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str(experiment.parent)),
        )
    try:
        results = tuner.fit()
        best = results.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
    except BaseException:
        finish_run(uri, parent, ok=False)
        raise
    trials = [
        {
            "trial": r.path.rsplit("/", 1)[-1] if r.path else "?",
            "trial_id": (r.metrics or {}).get("trial_id"),
            "params": r.config,
            "last_step": (r.metrics or {}).get("step"),
            sweep.metric: (r.metrics or {}).get(sweep.metric),
        }
        for r in results
    ]
    # A trial whose last report came before the final step was stopped by the scheduler.
    stopped = [t for t in trials if t["last_step"] is not None and t["last_step"] < base.train.steps]
    mark_stopped_trials(uri, parent, [t["trial_id"] for t in stopped])
    best_value = best.metrics.get(sweep.metric) if best.metrics else None
    summary = {
        "params": dict(best.config or {}),
        "metric": sweep.metric,
        "value": best_value,
        "errors": len(results.errors),
        "stopped_early": len(stopped),
        "trials": trials,
    }
    if best_value is not None:
        tracker.log_metrics({f"best/{sweep.metric}": float(best_value)}, 0)
    tracker.log_text(json.dumps(redact(summary), indent=2, default=str), "best_trial.json")
    tracker.log_text(to_yaml(redacted(apply_overrides(base, summary["params"]))), "config/best.yaml")
    finish_run(uri, parent, ok=not results.errors)
    print_fn(
        f"sweep {sweep.name}: best {sweep.metric}={best_value} with {summary['params']} (MLflow run {parent})"
    )
    return {**summary, "parent_run_id": parent, "tracking_uri": uri}
