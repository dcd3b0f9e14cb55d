"""LR schedule, the DeepSpeed config built from the run config, and MLflow outages."""

from __future__ import annotations

import logging

import pytest

from usvs_dist.config import ConfigError, OptimConfig, load_config
from usvs_dist.dist.collectives import free_port
from usvs_dist.dist.engine import deepspeed_config, lr_factor
from usvs_dist.tracking import MlflowTracker, finish_run


def test_warmup_then_cosine_to_min_ratio():
    optim = OptimConfig(warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, optim, total_steps=20) for s in range(20)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] == pytest.approx(0.1)
    assert lr_factor(50, optim, total_steps=20) == pytest.approx(0.1)  # past the end stays at the floor
    constant = OptimConfig(warmup_steps=0, schedule="constant")
    assert {lr_factor(s, constant, 10) for s in range(10)} == {1.0}


def test_deepspeed_config_comes_from_the_run_config():
    cfg = load_config(
        None, ["train.zero_stage=3", "train.grad_accum_steps=4", "optim.grad_clip=0", "data.batch_size=6"]
    )
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.0  # explicit: DeepSpeed clips at 1.0 when it is absent
    assert "train_batch_size" not in ds and ds["bf16"] == {"enabled": False}
    assert cfg.global_batch == 6 * 2 * 4


def test_global_batch_must_match_workers_micro_batch_and_accumulation():
    assert load_config(None, ["train.global_batch=32", "train.grad_accum_steps=2"]).global_batch == 32
    with pytest.raises(ConfigError, match=r"train.global_batch=32 is invalid: .* train.num_workers \(4\)"):
        load_config(None, ["train.global_batch=32", "train.num_workers=4", "train.grad_accum_steps=2"])


def test_an_mlflow_outage_is_a_warning_not_an_error(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the server is down
    tracker = MlflowTracker(uri, "0" * 32)
    with caplog.at_level(logging.WARNING):
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_text("x", "a.txt")
        tracker.close()
        finish_run(uri, "0" * 32, ok=True)
    assert caplog.text.count("training continues") == 2
    assert "could not mark MLflow run" in caplog.text
