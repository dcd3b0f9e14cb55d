"""Driver-side helpers: registry checks, tracking URI resolution, the Ray-job working-dir warning."""

from __future__ import annotations

import logging

import pytest

from usvs_dist.config import load_config
from usvs_dist.tracking import resolve_uri
from usvs_dist.train.preflight import check_config, check_labels, warn_about_job_working_dir


def test_registry_names_are_checked():
    check_config(load_config())
    with pytest.raises(ValueError, match="model.audio='cnn99' is invalid: expected one of cnn14, tiny_cnn14"):
        check_config(load_config(None, ["model.audio=cnn99"]))
    with pytest.raises(ValueError, match="objective.recipe='x'"):
        check_config(load_config(None, ["objective.recipe=x"]))
    # Only the encoders the recipe runs are checked: isbi2020 is video only.
    check_config(load_config(None, ["objective.recipe=isbi2020", "model.audio=cnn99"]))


def test_the_pretext_view_needs_a_frame_per_subclip():
    with pytest.raises(ValueError, match="data.num_frames=2 .* objective.pretext.subclips=3"):
        check_config(load_config(None, ["objective.recipe=isbi2020", "data.num_frames=2"]))
    # The rotation head alone reads the shuffled-and-rotated clip too.
    rotation_only = ["objective.recipe=custom", "objective.terms=[{term: rotation_ce, weight: 1.0}]"]
    with pytest.raises(ValueError, match="data.num_frames=2"):
        check_config(load_config(None, [*rotation_only, "data.num_frames=2"]))


def test_label_recipe_fails_before_workers_on_unlabelled_shards(tmp_path, caplog):
    needs = check_config(load_config(None, ["objective.recipe=awcl2022"]))
    unlabelled = {"labels": {"clips_with_labels": 0}, "totals": {"clips": 10}}
    with pytest.raises(ValueError, match="awcl2022 needs plane labels, but the shards in .* have none"):
        check_labels(needs, unlabelled, tmp_path, "awcl2022")
    with caplog.at_level(logging.WARNING):
        check_labels(
            needs, {"labels": {"clips_with_labels": 4}, "totals": {"clips": 10}}, tmp_path, "awcl2022"
        )
    assert "6 of 10 clips have no plane labels" in caplog.text
    check_labels(check_config(load_config()), unlabelled, tmp_path, "usvs2020")  # no labels needed


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri("sqlite:///mlruns.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_uri("sqlite:///mlruns.db", tmp_path) == "http://mlflow:5000"


def test_ray_job_working_dir_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job_dir = tmp_path / "working_dir_files" / "_ray_pkg_0"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    with caplog.at_level(logging.WARNING):
        warn_about_job_working_dir(load_config())
    assert "train.storage_path, tracking.uri" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_about_job_working_dir(
            load_config(None, ["train.storage_path=/shared/r", "tracking.uri=sqlite:////shared/m.db"])
        )
    assert caplog.text == ""


def test_mlflow_params_tags_and_config_artifacts_are_redacted(tmp_path, monkeypatch):
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from usvs_dist.train.launch import open_tracking

    monkeypatch.setenv("USVS_TEST_SHARDS", "/private/shards")
    pipe = "pipe:curl -s https://h/train-000000.tar?token=abc"
    cfg = load_config(
        None,
        [
            "data.shards=${oc.env:USVS_TEST_SHARDS}",
            f"data.shard_urls=['{pipe}']",
            "tracking.uri=http://alice:s3cret@mlflow:5000",
        ],
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tags = {"usvs.source": "s3://b/x?X-Amz-Signature=f00dfeed"}
    run_id, tracker = open_tracking(cfg, uri, "redacted-run", tags)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    recorded = str(run.data.params) + str(run.data.tags)
    tracker.close()
    for path in ("config/resolved.yaml", "config/deepspeed.json"):
        recorded += Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()
    assert run.data.params["data.shards"] == "${oc.env:USVS_TEST_SHARDS}"
    assert run.data.params["tracking.uri"] == "http://<redacted>@mlflow:5000"
    assert run.data.tags["usvs.source"] == "s3://b/x?<redacted>"
    for secret in ("/private/shards", "s3cret", "curl", "token=abc", "f00dfeed"):
        assert secret not in recorded, secret
    assert cfg.data.shards == "/private/shards" and cfg.data.shard_urls == [pipe]  # the run's own values
