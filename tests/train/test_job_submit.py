"""`ray job submit` against a local cluster started with token auth, as a user would run it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sharding.build import BuildOptions, build
from tests.train.runner import REPO, TINY, client_for, cluster_env
from usvs_dist.dist.collectives import free_port


@pytest.mark.slow
def test_ray_job_submit_runs_the_sharding_and_training_entries(
    phantom_raw, salt_file, phantom_shards, tmp_path
):
    env = cluster_env(tmp_path)
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    dashboard = free_port()
    work = tmp_path / "src"
    shutil.copytree(
        REPO,
        work,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "ray_results", "mlruns.db", "mlartifacts", ".venv"
        ),
    )
    start = subprocess.run(
        [
            *ray,
            "start",
            "--head",
            "--num-cpus=2",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]

    def submit(*entry: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*ray, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(work)]
            + ["--", "python", "-m", *entry],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    try:
        # Sharding as a Ray job: RAY_ADDRESS (set by `ray job submit`) sends scans to Ray tasks.
        shard_args = ["--salt-file", str(salt_file), "--size", "32", "--shard-clips", "4", "--no-progress"]
        job = submit(
            "sharding", "build", str(phantom_raw), "--out", str(tmp_path / "job_shards"), *shard_args
        )
        out = job.stdout + job.stderr
        assert job.returncode == 0 and re.search(r"Job '\w+' succeeded", out), out[-4000:]
        assert "scans to cut in Ray tasks on the cluster at" in out
        local = build(
            phantom_raw,
            tmp_path / "local_shards",
            salt_file,
            BuildOptions(size=32, shard_clips=4),
            log=lambda *_: None,
        )
        submitted = json.loads((tmp_path / "job_shards" / "index.json").read_text())
        assert [s["sha256"] for s in submitted["shards"]] == [s["sha256"] for s in local["shards"]]

        db = tmp_path / "mlruns.db"
        job = submit(
            "usvs_dist.train",
            f"data.shards={phantom_shards}",
            *TINY,
            "train.steps=3",
            "train.checkpoint_every=3",
            f"train.storage_path={tmp_path / 'ray_results'}",
            f"tracking.uri=sqlite:///{db}",
        )
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-4000:]
        assert re.search(r"Job '\w+' succeeded", out)
        run_id = re.search(r"MLflow run id: (\w+)", out).group(1)
        assert client_for(tmp_path).get_run(run_id).info.status == "FINISHED"
        assert Path(re.search(r"^checkpoint: (\S+)", out, re.M).group(1)).is_relative_to(
            tmp_path / "ray_results"
        )
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
