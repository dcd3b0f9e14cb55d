"""MLflow: the driver opens and closes the run; rank 0 logs into it by run id.

The driver creates the experiment and the run once (SQLite races on concurrent experiment
creation) and hands the run id to the workers, so a restarted worker group logs into the same
run rather than a new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from usvs_dist.config import redact

log = logging.getLogger(__name__)

RUN_NAME_TAG = "usvs.run_name"
RUN_KEY_TAG = "usvs.run_name_sha256"
"""A quote-free stand-in for the run name in search filters (names may hold both quote kinds)."""
MAX_PARAM_CHARS = 6000
BATCH = 100


def resolve_uri(uri: str, workdir: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else `uri` with a relative SQLite path made absolute.

    Ray workers may run in another directory than the driver; an absolute path keeps every
    process on the same database file.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(workdir or os.getcwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    return uri


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run_name_filter(run_name: str) -> str:
    """An MLflow search filter matching the run named `run_name`, whatever quotes it holds.

    MLflow's filter grammar has no escape inside a quoted value, so the value is quoted with the
    quote kind it lacks; a name holding both is matched by its sha256 tag instead (such names
    could not be searched before that tag existed, so no older run lacks it).
    """
    if "'" not in run_name:
        return f"tags.`{RUN_NAME_TAG}` = '{run_name}'"
    if '"' not in run_name:
        return f'tags.`{RUN_NAME_TAG}` = "{run_name}"'
    return f"tags.`{RUN_KEY_TAG}` = '{_sha256(run_name)}'"


def open_run(
    uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None
) -> str:
    """Create (or find, for a resumed run name) the run; log params once. Returns the run id.

    Param and tag values are redacted (config.redact: URL credentials and query strings, pipe:
    commands) whoever calls; callers pass config.redacted(cfg) so env-read values are hidden too.
    """
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, _artifact_root(uri))
    found = client.search_runs([exp_id], filter_string=run_name_filter(run_name), max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id
    run = client.create_run(
        exp_id,
        run_name=run_name,
        tags={RUN_NAME_TAG: run_name, RUN_KEY_TAG: _sha256(run_name), **redact(tags or {})},
    )
    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(redact(params).items())]
    for i in range(0, len(items), BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + BATCH])
    return run.info.run_id


def finish_run(uri: str, run_id: str, ok: bool) -> None:
    """Mark the run FINISHED or FAILED (a warning, not an error, when MLflow is unreachable)."""
    status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
    try:
        MlflowClient(uri).set_terminated(run_id, status)
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, redact(str(exc).splitlines()[0]))


def mark_stopped_trials(uri: str, parent_run_id: str, trial_ids: list[str]) -> None:
    """Tag the child runs of trials a scheduler stopped (`usvs.stopped_early`) and close any left RUNNING."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    for run in children:
        if run.data.tags.get("usvs.trial") not in trial_ids:
            continue
        client.set_tag(run.info.run_id, "usvs.stopped_early", "true")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def download_run_files(uri: str, run_id: str, paths: list[str], dest: str | Path) -> list[Path]:
    """Local copies of a run's artifacts (e.g. config/resolved.yaml); an error names a missing one."""
    client = MlflowClient(uri)
    out = []
    for path in paths:
        try:
            out.append(Path(client.download_artifacts(run_id, path, str(dest))))
        except Exception as exc:  # MlflowException for unknown runs or paths
            raise FileNotFoundError(
                redact(f"MLflow run {run_id} at {uri}: no artifact {path} ({exc})".splitlines()[0])
            ) from exc
    return out


class MlflowTracker:
    """Logs into an existing run; every MLflow error is a warning, never fatal.

    With `system_metrics`, MLflow's monitor samples CPU, memory (and GPU with nvidia-ml-py)
    into the same run, resuming its step axis after a restart.
    """

    def __init__(self, uri: str, run_id: str, system_metrics: bool = False, sampling_interval: float = 10.0):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    run_id, sampling_interval=sampling_interval, resume_logging=True, tracking_uri=uri
                )
                self.monitor.start()
            except Exception as exc:  # a missing psutil or an outage must not stop training
                log.warning("MLflow system metrics are off: %s", redact(str(exc).splitlines()[0]))
                self.monitor = None

    def _safe(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking outages must not stop training
            # MLflow's errors can quote the tracking URI, credentials included.
            log.warning("MLflow %s failed, training continues: %s", what, redact(str(exc).splitlines()[0]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log a batch of scalars at `step`."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._safe("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the run (values redacted, as params are)."""
        batch = [RunTag(k, str(v)) for k, v in redact(dict(tags)).items()]
        self._safe("set_tags", self.client.log_batch, self.run_id, tags=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder to the run's artifacts."""
        self._safe("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store text (a config) as an artifact file."""
        self._safe("log_text", self.client.log_text, self.run_id, text, artifact_file)

    def close(self) -> None:
        """Stop the system-metrics monitor; metrics themselves are written synchronously."""
        if self.monitor is not None:
            self._safe("system metrics", self.monitor.finish)
            self.monitor = None
