"""Fault tolerance: a killed worker and a stopped driver both continue from the last checkpoint;
a finished run rerun reports that checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.train.runner import TINY, client_for, entry_env, parse, steps_logged, train

RUN = ["train.num_workers=2", "train.checkpoint_every=10", "optim.warmup_steps=0"]


class _Run:
    """A training entry running in the background, its output collected by a thread."""

    def __init__(self, workdir, shards, *overrides):
        self.workdir = workdir
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "usvs_dist.train", f"data.shards={shards}", *TINY, *RUN, *overrides],
            cwd=workdir,
            env=entry_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_step(self, step: int, timeout: float = 300) -> str:
        """Poll MLflow until the run logged `step`; returns the run id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the run ended early:\n" + self.output[-3000:]
            found = re.search(r"MLflow run (\w{32})", self.output)
            if found:  # the driver has created the store and the run: safe to read
                steps = steps_logged(client_for(self.workdir), found.group(1))
                if steps and steps[-1] >= step:
                    return found.group(1)
            time.sleep(0.5)
        raise AssertionError(f"step {step} was not logged within {timeout} s:\n" + self.output[-3000:])

    def finish(self, timeout: float) -> str:
        """Wait for the entry to exit; kill its process group if it does not."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=10)
        return self.output


def _rank_process(output: str, rank: int) -> psutil.Process:
    """The process of `rank`, as the worker itself reported it (the latest group's).

    Counting Ray's worker processes raced Ray: it can hold an extra, idle RayTrainWorker process
    beside a group, and killing that one tests nothing.
    """
    pids = re.findall(rf"rank {rank} of \d+ runs in process (\d+)", output)
    assert pids, "no worker reported its rank:\n" + output[-3000:]
    return psutil.Process(int(pids[-1]))


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_checkpoint_into_the_same_mlflow_run(phantom_shards, tmp_path):
    job = _Run(tmp_path, phantom_shards, "train.steps=40", "train.max_failures=2", "train.run_name=fault")
    try:
        run_id = job.wait_for_step(14)
        worker = _rank_process(job.output, 1)
        assert worker.name() == "ray::RayTrainWorker", worker.cmdline()
        worker.send_signal(signal.SIGKILL)
    finally:
        out = job.finish(timeout=600)
    assert job.proc.returncode == 0, out[-4000:]
    run = parse(out, tmp_path)
    assert run.run_id == run_id
    client = run.client
    experiments = client.search_experiments()
    assert sum(len(client.search_runs([e.experiment_id])) for e in experiments) == 1  # one run, not two
    steps = steps_logged(client, run_id)
    assert steps == list(range(1, 41))  # no gap: the restart re-logs from the last checkpoint on
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert resumed and resumed[0] >= 10 and resumed[0] % 10 == 0  # from a checkpoint after the first
    assert json.loads((run.checkpoint / "train_state.json").read_text())["step"] == 40
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_stopped_driver_reruns_with_the_same_name_and_continues_and_reruns_once_finished(
    phantom_shards, tmp_path
):
    """A rerun continues a stopped run; rerun after its end, it reports the final checkpoint.

    A driver stopped after the final checkpoint was written but before Ray recorded it (its
    checkpoint_manager_snapshot.json) used to leave such a rerun with no checkpoint and a failed
    run; with the record intact the checkpoint must not be registered twice (with
    keep_checkpoints=1 the rotation would delete it)."""
    job = _Run(tmp_path, phantom_shards, "train.steps=200", "train.run_name=restart")
    try:
        run_id = job.wait_for_step(12)
        job.proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver
    finally:
        job.finish(timeout=180)
    assert job.proc.returncode != 0
    first_steps = steps_logged(client_for(tmp_path), run_id)
    assert 12 <= max(first_steps) < 200

    rerun = train(tmp_path, phantom_shards, *RUN, "train.steps=24", "train.run_name=restart")
    assert rerun.run_id == run_id  # the same MLflow run continues
    assert "continuing from" in rerun.output
    resumed = [m.value for m in rerun.client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0
    # No gap; steps the first driver logged past its last checkpoint stay in the history.
    assert set(range(1, 25)) <= set(steps_logged(rerun.client, run_id))
    assert json.loads((rerun.checkpoint / "train_state.json").read_text())["step"] == 24

    logged = len(rerun.client.get_metric_history(run_id, "loss"))
    (rerun.checkpoint.parent / "checkpoint_manager_snapshot.json").unlink()
    for _ in ("record lost", "record intact"):
        again = train(
            tmp_path,
            phantom_shards,
            *RUN,
            "train.steps=24",
            "train.run_name=restart",
            "train.keep_checkpoints=1",
        )
        assert again.run_id == run_id
        assert "already finished at step 24" in again.output
        assert json.loads((again.checkpoint / "train_state.json").read_text())["step"] == 24
        assert (again.checkpoint / "encoders.pt").is_file()
        assert len(again.client.get_metric_history(run_id, "loss")) == logged  # nothing retrained
        assert again.client.get_run(run_id).info.status == "FINISHED"
