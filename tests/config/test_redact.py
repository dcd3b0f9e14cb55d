"""Redaction of what runs record: URL credentials and query strings, pipe: commands, env values."""

from __future__ import annotations

import hashlib

import pytest

from usvs_dist.config import (
    apply_overrides,
    env_sources,
    flatten,
    from_dict,
    load_config,
    redact,
    redacted,
    to_dict,
    to_yaml,
)

PIPE = "pipe:aws s3 cp s3://bucket/train-000000.tar - --profile ops"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://alice:s3cret@mlflow:5000", "http://<redacted>@mlflow:5000"),
        ("postgresql://mlflow:pw@db/mlflow", "postgresql://<redacted>@db/mlflow"),
        ("https://token@host/x", "https://<redacted>@host/x"),
        (
            "https://bucket.s3.amazonaws.com/a/b.tar?X-Amz-Credential=AK%2F&X-Amz-Signature=abc123",
            "https://bucket.s3.amazonaws.com/a/b.tar?<redacted>",
        ),
        ("https://u:p@host/x?sig=1#frag", "https://<redacted>@host/x?<redacted>#frag"),
        ("see https://u:p@h/x?t=1 and s3://b/k", "see https://<redacted>@h/x?<redacted> and s3://b/k"),
        (PIPE, "pipe:" + hashlib.sha256(PIPE[5:].encode()).hexdigest()[:12]),
        # Left alone: nothing secret in them.
        ("sqlite:////abs/mlruns.db", "sqlite:////abs/mlruns.db"),
        ("s3://bucket/shards", "s3://bucket/shards"),
        ("/data/shards/train-{000000..000009}.tar", "/data/shards/train-{000000..000009}.tar"),
        ("what?", "what?"),
        ("user@example.org", "user@example.org"),
        (0.1, 0.1),
        (None, None),
    ],
)
def test_each_kind_of_secret_is_redacted(value, expected):
    assert redact(value) == expected
    assert redact(redact(value)) == expected  # redacting twice changes nothing


def test_strings_inside_lists_and_dicts_are_redacted():
    tree = {"a": [PIPE, "plain", ("http://u:p@h",)], "b": {"c": "s3://b/k?sig=x"}, "n": 3}
    out = redact(tree)
    assert out["a"][0].startswith("pipe:") and len(out["a"][0]) == len("pipe:") + 12
    assert out["a"][1:] == ["plain", ("http://<redacted>@h",)]
    assert out["b"] == {"c": "s3://b/k?<redacted>"} and out["n"] == 3
    assert tree["a"][0] == PIPE  # the input is not changed


def test_values_read_from_the_environment_are_logged_as_their_expression(tmp_path, monkeypatch):
    monkeypatch.setenv("USVS_TEST_SHARDS", "s3://private-bucket/shards")
    monkeypatch.setenv("USVS_TEST_TOKEN", "tok-123")
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  shards: ${oc.env:USVS_TEST_SHARDS}\n"
        "  shard_urls: ['pipe:curl -H \"Authorization: ${oc.env:USVS_TEST_TOKEN}\" https://h/x.tar']\n"
        "train:\n  storage_path: ${data.shards}\n"
    )
    cfg = load_config(path, ["tracking.uri=https://mlflow:${oc.env:USVS_TEST_TOKEN}@host"])
    # The run uses the real values...
    assert cfg.data.shards == cfg.train.storage_path == "s3://private-bucket/shards"
    assert cfg.tracking.uri == "https://mlflow:tok-123@host"
    # ...what is logged shows where they came from, and no value.
    assert set(env_sources(cfg)) == {"data.shards", "data.shard_urls", "train.storage_path", "tracking.uri"}
    params = flatten(redacted(cfg))
    assert params["data.shards"] == "${oc.env:USVS_TEST_SHARDS}"
    assert params["train.storage_path"] == "${data.shards}"  # interpolates an env value
    assert params["tracking.uri"] == "https://<redacted>@host"
    assert params["data.shard_urls"][0].startswith("pipe:") and len(params["data.shard_urls"][0]) == 17
    text = to_yaml(redacted(cfg))
    assert "private-bucket" not in text and "tok-123" not in text
    assert "tok-123" not in str(params) and "private-bucket" not in str(params)
    # The redacted config loads again where the variables are set.
    again = tmp_path / "resolved.yaml"
    again.write_text(to_yaml(redacted(cfg)))
    assert load_config(again).data.shards == cfg.data.shards


def test_an_override_of_an_env_value_is_no_longer_redacted(monkeypatch):
    monkeypatch.setenv("USVS_TEST_SHARDS", "/private/shards")
    cfg = load_config(None, ["data.shards=${oc.env:USVS_TEST_SHARDS}", "data.shards=/public/shards"])
    assert env_sources(cfg) == {} and flatten(redacted(cfg))["data.shards"] == "/public/shards"


def test_env_sources_survive_the_trip_to_workers_and_sweep_trials(monkeypatch):
    monkeypatch.setenv("USVS_TEST_SHARDS", "/private/shards")
    base = from_dict({"data": {"shards": "${oc.env:USVS_TEST_SHARDS}"}})  # a sweep file's base
    assert env_sources(base) == {"data.shards": "${oc.env:USVS_TEST_SHARDS}"}
    trial = apply_overrides(from_dict(to_dict(base), env_sources(base)), {"objective.temperature": 0.2})
    assert trial.data.shards == "/private/shards" and trial.objective.temperature == 0.2
    assert flatten(redacted(trial))["data.shards"] == "${oc.env:USVS_TEST_SHARDS}"
    swept = apply_overrides(base, {"data.shards": "/other"})
    assert env_sources(swept) == {}
