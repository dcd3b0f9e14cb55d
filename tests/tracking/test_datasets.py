"""The shard set as an MLflow dataset input, and the commit tag MLflow's UI shows."""

from __future__ import annotations

import json
import re

from mlflow.tracking import MlflowClient

from usvs_dist.config import load_config
from usvs_dist.data.shards import index_sha256
from usvs_dist.tracking.datasets import log_shard_set
from usvs_dist.train.launch import git_source_tags, open_tracking


def test_the_shard_set_and_the_commit_reach_the_run(phantom_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id, tracker = open_tracking(load_config(), uri, "data-run", {**git_source_tags()})
    tracker.close()
    sha = index_sha256(phantom_shards)
    log_shard_set(uri, run_id, str(phantom_shards), sha, "train", 18)
    run = MlflowClient(uri).get_run(run_id)
    (logged,) = run.inputs.dataset_inputs
    dataset = logged.dataset
    assert dataset.name == phantom_shards.name and dataset.digest == sha[:36]
    assert dataset.source_type == "local" and json.loads(dataset.source)["uri"] == str(phantom_shards)
    assert json.loads(dataset.profile) == {"index_sha256": sha, "split": "train", "clips": 18}
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "train", "usvs.split": "train"}
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"])


def test_an_s3_source_is_kept_as_given_and_redacted(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id, tracker = open_tracking(load_config(), uri, "s3-run", {})
    tracker.close()
    log_shard_set(uri, run_id, "s3://bucket/shards?X-Amz-Signature=f00d", "ab" * 32, "train", 5)
    (logged,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert logged.dataset.source_type == "s3" and "f00d" not in logged.dataset.source
    assert logged.dataset.name == "shards"
