"""An unreachable MLflow at start: a prompt warning, a local store the run logs to, a sync to a server."""

from __future__ import annotations

import logging
import os
import sqlite3

from mlflow.tracking import MlflowClient

from usvs_dist.config import load_config
from usvs_dist.dist.collectives import free_port
from usvs_dist.tracking.fallback import FALLBACK_DB, fallback_uri, reachable_uri, unreachable
from usvs_dist.tracking.sync import SYNCED_FROM_TAG, sync
from usvs_dist.train.launch import open_tracking


def test_a_closed_port_falls_back_to_a_local_store_that_gets_the_metrics(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # MLflow's default: 7 retries with backoff (minutes). The probe must not wait for them.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    server = f"http://127.0.0.1:{free_port()}"
    printed = []
    with caplog.at_level(logging.WARNING):
        uri = reachable_uri(server, log_fn=printed.append)
    assert uri == fallback_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / FALLBACK_DB}"
    assert "is unreachable" in caplog.text and str(tmp_path / FALLBACK_DB) in caplog.text
    assert "usvs_dist.tracking.sync" in caplog.text
    assert printed and str(tmp_path / FALLBACK_DB) in printed[0]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # the probe's setting is undone

    cfg = load_config(None, [f"tracking.uri={server}"])
    run_id, tracker = open_tracking(cfg, uri, "offline-run", {"recipe": "usvs2020"})
    tracker.log_metrics({"loss": 1.5}, 1)
    tracker.log_metrics({"loss": 1.25}, 2)
    tracker.close()
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.5, 1.25]
    with sqlite3.connect(tmp_path / FALLBACK_DB) as db:  # the named file holds it
        assert db.execute("select count(*) from metrics where key = 'loss'").fetchone()[0] == 2


def test_a_reachable_store_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert unreachable(uri) is None
    assert reachable_uri(uri, log_fn=lambda *_: None) == uri
    assert not (tmp_path / FALLBACK_DB).exists()


def test_sync_copies_runs_once(tmp_path):
    src, dst = f"sqlite:///{tmp_path / 'fallback.db'}", f"sqlite:///{tmp_path / 'server.db'}"
    cfg = load_config()
    run_id, tracker = open_tracking(cfg, src, "offline-run", {"recipe": "usvs2020"})
    tracker.log_metrics({"loss": 2.0}, 1)
    tracker.log_metrics({"loss": 1.0}, 2)
    MlflowClient(src).set_terminated(run_id, "FINISHED")
    copied = sync(src, dst, log_fn=lambda *_: None)
    assert list(copied) == [run_id]
    client = MlflowClient(dst)
    run = client.get_run(copied[run_id])
    assert run.info.run_name == "offline-run" and run.info.status == "FINISHED"
    assert run.data.tags[SYNCED_FROM_TAG] == run_id and run.data.tags["recipe"] == "usvs2020"
    assert run.data.params == MlflowClient(src).get_run(run_id).data.params
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "config")} >= {"config/resolved.yaml"}
    assert sync(src, dst, log_fn=lambda *_: None) == {}  # already there


def test_sync_leaves_running_runs_and_points_trials_at_their_copied_parent(tmp_path):
    src, dst = f"sqlite:///{tmp_path / 'fallback.db'}", f"sqlite:///{tmp_path / 'server.db'}"
    client = MlflowClient(src)
    exp = client.create_experiment("sweep")
    parent = client.create_run(exp, run_name="parent", start_time=1000).info.run_id
    trial = client.create_run(
        exp, run_name="trial", start_time=2000, tags={"mlflow.parentRunId": parent}
    ).info.run_id
    running = client.create_run(exp, run_name="still-running", start_time=3000).info.run_id
    for run in (parent, trial):
        client.set_terminated(run, "FINISHED")
    said: list[str] = []
    copied = sync(src, dst, log_fn=said.append)
    assert set(copied) == {parent, trial}
    assert MlflowClient(dst).get_run(copied[trial]).data.tags["mlflow.parentRunId"] == copied[parent]
    assert any(running in line and "still running" in line for line in said)
    client.set_terminated(running, "FINISHED")
    assert list(sync(src, dst, log_fn=said.append)) == [running]  # copied once it has ended
