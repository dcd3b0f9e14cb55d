"""Scale and resilience of `sharding build`: worker processes and Ray tasks give the same shards,
a failed write (disk full) leaves only complete shards, and a rerun resumes from them."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import tarfile

import pytest

from sharding.__main__ import main as shard_main
from sharding.build import BuildOptions, Execution, build
from sharding.runners import _ordered, ray_address
from sharding.writer import JOURNAL_NAME
from tests.sharding.scankit import build_args
from usvs_dist.data import schema

OPTS = BuildOptions(clip_seconds=2.0, fps=8.0, size=32, shard_clips=4, split_fractions=(0.6, 0.2, 0.2))
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def reference(phantom_raw, salt_file, tmp_path_factory):
    """The index of a plain one-process build of the phantom with OPTS."""
    return build(phantom_raw, tmp_path_factory.mktemp("ref"), salt_file, OPTS, **QUIET)


def _shards(index: dict) -> list[tuple[str, str]]:
    return [(s["name"], s["sha256"]) for s in index["shards"]]


def test_worker_processes_give_the_same_shards(phantom_raw, salt_file, tmp_path, reference):
    index = build(phantom_raw, tmp_path, salt_file, OPTS, execution=Execution(workers=2), **QUIET)
    assert _shards(index) == _shards(reference)
    assert index == reference


@pytest.mark.slow  # starts a local Ray instance (tens of seconds on 2 cores)
def test_ray_tasks_give_the_same_shards(phantom_raw, salt_file, tmp_path, reference):
    index = build(
        phantom_raw, tmp_path, salt_file, OPTS, execution=Execution(workers=2, ray_address="local"), **QUIET
    )
    assert _shards(index) == _shards(reference)


def test_ray_results_come_in_task_order_with_at_most_a_window_in_flight():
    # run_ray's ordering without Ray: submit returns a stand-in for a task reference.
    in_flight: list[int] = []

    def submit(task: int) -> int:
        in_flight.append(task)
        assert len(in_flight) <= 3
        return task

    def wait(ref: int) -> int:
        in_flight.remove(ref)
        return ref * ref

    assert list(_ordered(submit, wait, range(7), 3)) == [t * t for t in range(7)]
    assert in_flight == []


def test_ray_address_comes_from_the_flag_or_ray_job_submit(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None
    assert ray_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")  # what `ray job submit` gives the entrypoint
    assert ray_address(None) == "http://head:8265"


def _fail_writes_after(monkeypatch, members: int) -> None:
    real = tarfile.TarFile.addfile
    calls = {"n": 0}

    def addfile(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] > members:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kw)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)


def test_disk_full_mid_shard_leaves_complete_shards_and_a_rerun_resumes(
    phantom_raw, salt_file, tmp_path, reference, monkeypatch, capsys
):
    out = tmp_path / "out"
    args = build_args(
        phantom_raw, out, salt_file, "--fps 8 --size 32 --shard-clips 4 --split 0.6,0.2,0.2 --no-progress"
    )
    with monkeypatch.context() as m:
        _fail_writes_after(m, 2 * 13)  # 13 clips, then the 14th write fails inside a shard
        assert shard_main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command to resume" in err
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.endswith(".tmp")] and schema.INDEX_NAME not in left
    complete = {n: (out / n).stat().st_mtime_ns for n in left if n.endswith(".tar")}
    assert 0 < len(complete) < len(reference["shards"])
    expected = dict(_shards(reference))
    from sharding.writer import sha256_file

    assert all(sha256_file(out / n) == expected[n] for n in complete)  # what was kept is final

    assert shard_main(args) == 0  # the same command again
    assert "resuming" in capsys.readouterr().out
    index = json.loads((out / schema.INDEX_NAME).read_text())
    assert index == reference
    assert all((out / n).stat().st_mtime_ns == t for n, t in complete.items())  # not written again
    assert not (out / JOURNAL_NAME).exists() and not list(out.glob(".*"))


def test_a_damaged_kept_shard_is_written_again_on_resume(
    phantom_raw, salt_file, tmp_path, reference, monkeypatch
):
    with monkeypatch.context() as m:
        _fail_writes_after(m, 2 * 30)
        with pytest.raises(Exception, match="resume"):
            build(phantom_raw, tmp_path, salt_file, OPTS, **QUIET)
    train = sorted(tmp_path.glob("train-*.tar"))
    assert len(train) >= 2
    train[0].write_bytes(train[0].read_bytes()[:-1024])  # the first complete shard no longer hashes right
    logged = []
    index = build(phantom_raw, tmp_path, salt_file, OPTS, log=logged.append)
    assert index == reference
    assert any("resuming" in line for line in logged)


def test_an_unfinished_build_with_other_options_needs_overwrite(
    phantom_raw, salt_file, tmp_path, monkeypatch
):
    with monkeypatch.context() as m:
        _fail_writes_after(m, 10)
        with pytest.raises(Exception, match="resume"):
            build(phantom_raw, tmp_path, salt_file, OPTS, **QUIET)
    other = BuildOptions(**{**OPTS.__dict__, "size": 48})
    with pytest.raises(Exception, match="unfinished build of another manifest or other options"):
        build(phantom_raw, tmp_path, salt_file, other, **QUIET)
    index = build(
        phantom_raw, tmp_path, salt_file, BuildOptions(**{**other.__dict__, "overwrite": True}), **QUIET
    )
    assert index["size"] == [48, 48] and not (tmp_path / JOURNAL_NAME).exists()


def test_progress_bar_shows_clips_per_second_and_eta(phantom_raw, salt_file, tmp_path, capsys):
    args = build_args(phantom_raw, tmp_path / "o", salt_file, "--size 32")
    assert shard_main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"build: 100%\|.*scan 6/6, 36 clips, [\d.]+ clips/s \[\d+:\d+<\d+:\d+\]", err), err


def test_bench_prints_build_and_baseline_and_the_summary_line(phantom_raw, tmp_path, capsys):
    # Two of the phantom's scans: the bench cuts every scan twice (build and baseline).
    with phantom_raw.open() as f:
        rows = list(csv.DictReader(f))[:2]
    for row in rows:
        row.update(
            {c: str(phantom_raw.parent / row[c]) for c in ("video", "audio", "labels", "gaze") if row[c]}
        )
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert shard_main(["bench", str(manifest), "--size", "32", "--clip-seconds", "4"]) == 0
    out = capsys.readouterr().out
    assert "build (1 worker(s))" in out and "baseline (PyAV, per clip)" in out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"scan_s_per_core_s=\d+\.\d{3} ratio_vs_baseline=\d+\.\d{3}", last), last
