"""An unreachable tracking server at start: a warning within seconds, then a local store.

MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4 minutes,
MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR) before it raises, so the driver probes the
server once with retries off and a short timeout. When it does not answer, the run logs to a
SQLite store beside the working directory (`mlruns-fallback.db`, artifacts in `mlartifacts/`
next to it), which `python -m usvs_dist.tracking.sync` copies into the server later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from usvs_dist.config import redact

log = logging.getLogger(__name__)

FALLBACK_DB = "mlruns-fallback.db"
PROBE_TIMEOUT_S = 5


@contextmanager
def _quick_http(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP settings for one probe: no retries, a `timeout_s` connect/read timeout.

    MLflow reads these variables on every request (mlflow.utils.rest_utils.http_request), so
    setting them around the probe leaves the run's own requests with the user's settings.
    """
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unreachable(uri: str, timeout_s: int = PROBE_TIMEOUT_S) -> str | None:
    """Why the tracking store at `uri` cannot be used now (one redacted line), or None when it answers."""
    try:
        with _quick_http(timeout_s):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # connection refused, DNS, timeouts, HTTP 5xx, an unwritable SQLite path
        text = str(exc).strip().splitlines()
        return redact(text[0] if text else type(exc).__name__)
    return None


def fallback_uri(workdir: str | Path | None = None) -> str:
    """The local SQLite store a run falls back to: `<workdir or cwd>/mlruns-fallback.db`."""
    return f"sqlite:///{(Path(workdir or os.getcwd()) / FALLBACK_DB).resolve()}"


def reachable_uri(uri: str, workdir: str | Path | None = None, log_fn=print) -> str:
    """`uri` when its store answers, else the fallback store's URI, with a warning naming both.

    The fallback is a file on the driver's disk; on a multi-node cluster the rank-0 worker logs
    into it only when `workdir` is on storage every node mounts (README, "Tracking offline").
    """
    why = unreachable(uri)
    if why is None:
        return uri
    local = fallback_uri(workdir)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    log.warning(
        "MLflow at %s is unreachable (%s): training continues, logging to %s; copy it to the server "
        "later with `python -m usvs_dist.tracking.sync --from %s --to <server URI>`",
        redact(uri),
        why,
        local,
        local,
    )
    log_fn(f"tracking: MLflow at {redact(uri)} is unreachable; this run logs to {local}")
    return local
