"""Driver-side helpers: registry checks, tracking URI resolution, the Ray-job working-dir warning."""

from __future__ import annotations

import logging

import pytest

from usvs_dist.config import load_config
from usvs_dist.tracking import resolve_uri
from usvs_dist.train.launch import _warn_about_job_working_dir, check_config


def test_registry_names_are_checked():
    check_config(load_config())
    with pytest.raises(ValueError, match="model.audio='cnn99' is invalid: expected one of tiny2d"):
        check_config(load_config(None, ["model.audio=cnn99"]))
    with pytest.raises(ValueError, match="objective.recipe='x'"):
        check_config(load_config(None, ["objective.recipe=x"]))


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
        _warn_about_job_working_dir(load_config())
    assert "train.storage_path, tracking.uri" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _warn_about_job_working_dir(
            load_config(None, ["train.storage_path=/shared/r", "tracking.uri=sqlite:////shared/m.db"])
        )
    assert caplog.text == ""
