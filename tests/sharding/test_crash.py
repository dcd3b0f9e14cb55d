"""Crash isolation of `sharding build`: a worker process that dies fails only its scan, and
workers never outlive a build process killed with SIGKILL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

import sharding.build
from sharding.__main__ import main as shard_main
from sharding.build import BuildOptions, Execution, build
from sharding.deid import hash_id
from sharding.runners import WorkerDied, _ray_result, run_processes
from tests.sharding import crashkit
from tests.sharding.scankit import build_args
from usvs_dist.data import schema

REPO = Path(__file__).resolve().parents[2]
FLAGS = "--fps 8 --size 32 --shard-clips 4 --split 0.6,0.2,0.2 --no-progress --workers 2"


def test_a_dead_worker_fails_only_its_task_and_results_keep_their_order():
    arg = {"die": {3}, "exit": {6}}
    crashed = []
    out = list(run_processes(crashkit.square_or_die, range(9), arg, 2, lambda t, r: crashed.append(t) or r))
    assert out[:3] == [0, 1, 4] and out[4:6] == [16, 25] and out[7:] == [49, 64]
    assert out[3] == "worker process died (signal 9) twice"
    assert out[6] == "worker process died (exit status 3) twice"
    assert crashed == [3, 6]


def test_without_on_crash_a_dead_worker_is_an_error():
    with pytest.raises(WorkerDied, match=r"signal 9"):
        list(run_processes(crashkit.square_or_die, range(3), {"die": {1}}, 2))


def _manifest_with(
    phantom_raw: Path, dest: Path, scan_ids: dict[int, str], rows_kept: int | None = None
) -> Path:
    """A copy of the phantom manifest (its first `rows_kept` rows) with absolute paths and some
    rows' scan_id replaced."""
    with phantom_raw.open() as f:
        rows = list(csv.DictReader(f))[:rows_kept]
    for row in rows:
        for column in ("video", "audio", "labels", "gaze"):
            if row[column]:
                row[column] = str(phantom_raw.parent / row[column])
    for k, scan_id in scan_ids.items():
        rows[k]["scan_id"] = scan_id
    path = dest / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _scans_in_shards(out: Path) -> set[str]:
    keys = set()
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys |= {name.split("_", 1)[0] for name in tar.getnames()}
    return keys


def test_a_scan_whose_worker_dies_twice_is_a_failed_scan_and_the_build_goes_on(
    phantom_raw, salt_file, tmp_path, monkeypatch, capsys
):
    from tests.conftest import SALT

    # Row 1 (manifest line 3) kills its worker on every try; row 4 only on its first.
    manifest = _manifest_with(phantom_raw, tmp_path, {1: crashkit.CRASH_ALWAYS, 4: crashkit.CRASH_ONCE})
    monkeypatch.setenv(crashkit.ONCE_FLAG_ENV, str(tmp_path / "crashed-once"))
    # Spawned workers import the task function by name: crashkit's wrapper is importable there.
    monkeypatch.setattr(sharding.build, "cut_scan", crashkit.cut_or_die)
    out = tmp_path / "out"
    assert shard_main(build_args(manifest, out, salt_file, FLAGS)) == 1
    err = capsys.readouterr().err
    assert "skipped manifest line 3 (video file): worker process died (signal 9) twice" in err
    assert str(phantom_raw.parent) not in err
    index = json.loads((out / schema.INDEX_NAME).read_text())
    assert index["totals"]["failed_scans"] == 1 and index["totals"]["scans"] == 5
    (error,) = index["errors"]
    assert error["manifest_line"] == 3 and error["file"] == "video" and "died" in error["reason"]
    scans = _scans_in_shards(out)
    assert hash_id(SALT, "scan", crashkit.CRASH_ONCE) in scans  # retried alone, it passed
    assert hash_id(SALT, "scan", crashkit.CRASH_ALWAYS) not in scans
    assert len(scans) == 5

    # --allow-failures makes the crash exit 0. Two scans, one crashing, show it: each scan in a
    # broken pool costs a fresh worker process, so the whole manifest would only add time.
    (tmp_path / "two").mkdir()
    two = _manifest_with(phantom_raw, tmp_path / "two", {1: crashkit.CRASH_ALWAYS}, rows_kept=2)
    args = build_args(two, tmp_path / "out2", salt_file, FLAGS + " --allow-failures")
    assert shard_main(args) == 0

    # The CLI's default of one worker cuts in a worker process too: the crash costs its scan.
    (tmp_path / "crashed-once").unlink()
    one = FLAGS.replace("--workers 2", "--workers 1")
    assert shard_main(build_args(manifest, tmp_path / "out1", salt_file, one)) == 1
    assert "manifest line 3 (video file): worker process died (signal 9) twice" in capsys.readouterr().err
    assert len(_scans_in_shards(tmp_path / "out1")) == 5


def test_workers_end_when_the_build_process_is_killed(phantom_raw, salt_file, tmp_path):
    args = build_args(phantom_raw, tmp_path / "out", salt_file, FLAGS)
    build = subprocess.Popen([sys.executable, "-m", "sharding", *args], cwd=REPO, stderr=subprocess.DEVNULL)
    parent = psutil.Process(build.pid)
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, "the build did not start its two workers"
        time.sleep(1.0)  # into their first scans
        children = parent.children(recursive=True)
        build.send_signal(signal.SIGKILL)
        build.wait()
    finally:
        if build.poll() is None:
            build.kill()
    _, alive = psutil.wait_procs(children, timeout=5)
    left = [p.cmdline() for p in alive]
    for p in alive:
        p.kill()  # do not leave them to the next test
    assert not left, f"processes left behind by the killed build: {left}"


def test_a_ray_task_that_died_on_every_try_is_a_failed_scan(monkeypatch):
    import ray
    from ray.exceptions import RayTaskError, WorkerCrashedError

    def crashed(ref):
        raise WorkerCrashedError()

    monkeypatch.setattr(ray, "get", crashed)
    assert _ray_result("task", "ref", lambda t, r: (t, r)) == (
        "task",
        "Ray worker died (WorkerCrashedError) 3 times",
    )
    with pytest.raises(WorkerCrashedError):
        _ray_result("task", "ref", None)

    def failed(ref):
        raise RayTaskError("cut_scan", "Traceback ...", ValueError("a bug"))

    monkeypatch.setattr(ray, "get", failed)
    with pytest.raises(RayTaskError):  # an error of the task function itself is not a crash
        _ray_result("task", "ref", lambda t, r: (t, r))


@pytest.mark.slow
def test_a_scan_whose_ray_task_dies_on_every_try_is_a_failed_scan(
    phantom_raw, salt_file, tmp_path, monkeypatch
):
    manifest = _manifest_with(phantom_raw, tmp_path, {2: crashkit.CRASH_ALWAYS})
    monkeypatch.setattr(sharding.build, "cut_scan", crashkit.cut_or_die)
    opts = BuildOptions(fps=8.0, size=32, shard_clips=4, split_fractions=(0.6, 0.2, 0.2))
    execution = Execution(workers=2, ray_address="local")
    index = build(manifest, tmp_path / "out", salt_file, opts, log=lambda *_: None, execution=execution)
    (error,) = index["errors"]
    assert error["manifest_line"] == 4
    assert error["reason"] == "Ray worker died (WorkerCrashedError) 3 times"
    assert index["totals"]["scans"] == 5 and len(_scans_in_shards(tmp_path / "out")) == 5
