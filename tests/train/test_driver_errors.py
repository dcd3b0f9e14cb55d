"""Bad shard locations and odd run names: exit 2 with one line naming the key, before Ray starts."""

from __future__ import annotations

import importlib
import sys

import pytest
from mlflow.tracking import MlflowClient

from usvs_dist.config import load_config
from usvs_dist.tracking.mlflow_tracker import run_name_filter
from usvs_dist.train.__main__ import main as train_main
from usvs_dist.train.launch import open_tracking


def _refused(argv: list[str], capsys) -> str:
    code = train_main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "Started a local Ray instance" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.mark.parametrize("location", ["/nonexistent", "file:///nonexistent", "~/no-such-shards"])
def test_a_missing_shard_folder_is_one_line_naming_data_shards(location, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _refused([f"data.shards={location}"], capsys)
    assert line == (
        f"error: config key data.shards={location!r}: no index.json there "
        "(expected a folder or URL prefix written by `sharding build`)"
    )
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlruns.db").exists()


def test_an_unreadable_index_and_an_unknown_protocol_name_data_shards(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    line = _refused([f"data.shards={tmp_path / 'bad'}"], capsys)
    assert line.startswith(f"error: config key data.shards='{tmp_path / 'bad'}': cannot read its index.json")
    assert "not valid JSON" in line
    line = _refused(["data.shards=nosuch://bucket/x"], capsys)
    assert line.startswith("error: config key data.shards='nosuch://bucket/x': cannot read its index.json")


def test_s3_without_s3fs_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if it were not installed
    # fsspec keeps the class of a protocol once used (the s3 tests may have run first).
    monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, "s3", raising=False)
    line = _refused(["data.shards=s3://bucket/prefix"], capsys)
    assert line.startswith("error: config key data.shards='s3://bucket/prefix': ")
    assert line.endswith('pip install -e ".[s3]"')


@pytest.mark.parametrize("name", ["a/b", "..", "x\\y"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _refused([f"train.run_name={name}"], capsys)
    assert line.startswith(f"error: config key train.run_name={name!r} is invalid: expected one folder name")


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "both ' and \"", "a`b"])
def test_run_names_with_quotes_are_found_again(name, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config()
    first, tracker = open_tracking(cfg, uri, name, {})
    tracker.close()
    again, tracker = open_tracking(cfg, uri, name, {})  # a resumed run logs into the same MLflow run
    tracker.close()
    assert again == first
    other, _ = open_tracking(cfg, uri, name + "x", {})
    assert other != first
    exp = MlflowClient(uri).get_experiment_by_name(cfg.tracking.experiment)
    assert len(MlflowClient(uri).search_runs([exp.experiment_id], run_name_filter(name))) == 1
