"""Run `python -m usvs_dist.train` in a subprocess, as users do, and read back what it left."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.batch_size=4",
    "data.loader_workers=1",
    "model.width=4",
    "model.embed_dim=16",
    "tracking.system_metrics_interval=1",
]


def entry_env() -> dict[str, str]:
    """Environment for a training subprocess: this checkout importable, no outside cluster or server."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


def cluster_env(workdir: Path) -> dict[str, str]:
    """Environment for `ray start` and its clients with token auth on, as the README sets it up:
    RAY_AUTH_MODE=token and a fresh token in a file of `workdir` (`ray start` creates none, and
    with the mode set and no token it refuses to start; the user's ~/.ray stays untouched)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # The job's python is the one on the PATH of the process that ran `ray start`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    token = workdir / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_AUTH_TOKEN", None)
    return env


@dataclass
class Finished:
    """A completed training run."""

    output: str
    """stdout and stderr of the entry (the workers log to stderr)."""
    run_id: str
    checkpoint: Path
    client: MlflowClient


def client_for(workdir: Path) -> MlflowClient:
    """MLflow client of the SQLite store a run in `workdir` wrote."""
    return MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")


def parse(output: str, workdir: Path) -> Finished:
    """Run id and checkpoint path from the entry's closing lines."""
    run_id = re.search(r"MLflow run id: (\w+)", output).group(1)
    checkpoint = Path(re.search(r"^checkpoint: (\S+)", output, re.M).group(1))
    return Finished(output, run_id, checkpoint, client_for(workdir))


def run_entry(workdir: Path, module: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m module args` in `workdir`, as users run it; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=workdir,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train(
    workdir: Path, shards: Path | None, *overrides: str, timeout: float = 600, tiny: bool = True
) -> Finished:
    """Run the entry to completion in `workdir`; fails the test with the output tail otherwise.

    `shards` None trains on the phantom cache (set phantom.cache_dir); `tiny` adds TINY's overrides.
    """
    data = [f"data.shards={shards}"] if shards is not None else []
    proc = run_entry(workdir, "usvs_dist.train", *data, *(TINY if tiny else []), *overrides, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return parse(proc.stdout + proc.stderr, workdir)


def steps_logged(client: MlflowClient, run_id: str, metric: str = "loss") -> list[int]:
    """Distinct steps at which `metric` was logged, sorted."""
    return sorted({m.step for m in client.get_metric_history(run_id, metric)})
