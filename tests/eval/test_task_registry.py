"""The task registry: the evaluation entry and periodic evaluation run the same tasks from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from usvs_dist.config import load_config
from usvs_dist.eval import tasks
from usvs_dist.eval.encoders import build_encoders
from usvs_dist.evaluate import evaluate
from usvs_dist.models import build_model
from usvs_dist.train.periodic_eval import PeriodicEval

TINY = ["model.width=4", "model.embed_dim=8", "data.frame_size=32"]


def _registry(monkeypatch) -> list[tuple[str, str]]:
    """Replace TASKS with recording tasks on fake clips; returns the (task, encoders' source) runs."""
    runs: list[tuple[str, str]] = []
    clips = tasks.Clips("fake", lambda cfg: ["train"], False, False, lambda clips, cfg: "fake clips")
    monkeypatch.setattr(tasks.Clips, "load", lambda self, cfg, location, max_clips: SimpleNamespace(split=[]))

    def task(name: str, periodic: bool = True, heads: tuple[str, ...] = ()) -> tasks.Task:
        def run(enc, clips, protocols):
            runs.append((name, enc.source))
            return {f"{name}/score": 1.0, f"{name}/score_std": 0.0}, None

        return tasks.Task(run, clips, ("video", "image"), heads=heads, periodic=periodic)

    monkeypatch.setattr(
        tasks,
        "TASKS",
        {
            "alpha": task("alpha"),
            "beta": task("beta", periodic=False),
            "gamma": task("gamma", heads=("video", "audio")),
        },
    )
    return runs


def test_evaluate_and_periodic_evaluation_loop_over_the_same_registry(monkeypatch, tmp_path):
    runs = _registry(monkeypatch)
    cfg = load_config(None, TINY)
    enc = build_encoders(cfg, None, "trained")
    result = evaluate(enc, "nowhere", list(tasks.TASKS), ("linear",), tmp_path)
    assert runs == [(n, s) for n in ("alpha", "beta", "gamma") for s in ("trained", "random init")]
    assert result["pretrained"] == {
        f"{n}/score{k}": v for n in ("alpha", "beta", "gamma") for k, v in (("", 1.0), ("_std", 0.0))
    }
    assert "- fake: fake clips" in result["report"]
    assert {task: set(took) for task, took in result["seconds"].items()} == {
        n: {"pretrained", "random"} for n in ("alpha", "beta", "gamma")
    }
    assert "| beta |" in result["report"]  # its wall times

    runs.clear()
    model = build_model(cfg, {"video", "audio"})
    metrics = PeriodicEval(cfg, "nowhere")(model)
    assert runs == [("alpha", "training"), ("gamma", "training")]
    seconds = metrics.pop("eval/seconds")  # what the call cost, logged with its metrics
    assert metrics == {"eval/alpha/score": 1.0, "eval/gamma/score": 1.0}
    assert isinstance(seconds, float) and seconds >= 0
    assert model.training

    # A task whose heads the model lacks is skipped during training.
    runs.clear()
    PeriodicEval(cfg, "nowhere")(build_model(cfg, {"order_logits"}))
    assert runs == [("alpha", "training")]


def test_the_registry_keeps_the_entry_s_tasks_and_training_s_subset():
    assert list(tasks.TASKS) == ["planes", "saliency", "retrieval"]
    assert list(tasks.periodic_tasks()) == ["planes", "retrieval"]
    assert tasks.TASKS["planes"].clips is tasks.TASKS["saliency"].clips
    assert not tasks.LABELLED_CLIPS.audio and tasks.NARRATED_CLIPS.audio
    fresh = build_encoders(load_config(None, TINY), None, "random")  # encoders, no heads
    assert tasks.TASKS["planes"].runs_on(fresh) and not tasks.TASKS["retrieval"].runs_on(fresh)


def test_periodic_evaluation_runs_where_the_model_is_or_on_a_copy_on_eval_device(monkeypatch):
    _registry(monkeypatch)
    model = build_model(load_config(None, TINY), {"video", "audio"})
    for device in ("auto", "cpu"):  # the model is on the CPU: both evaluate the live modules
        periodic = PeriodicEval(load_config(None, [*TINY, f"eval.device={device}"]), "nowhere")
        assert periodic._encoders(model).encoders["video"] is model.encoders["video"]

    # Elsewhere (here the meta device stands in for another one): a copy, built without drawing
    # from the training RNG (the gpu test in test_device_progress.py compares its weights).
    periodic.device = torch.device("meta")
    rng = torch.get_rng_state()
    copy = periodic._encoders(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert copy.device.type == "meta" and set(copy.heads) == {"video", "audio"}
    assert copy.encoders["video"] is not model.encoders["video"]
    live = dict(model.encoders["video"].named_parameters())
    assert all(p.shape == live[name].shape for name, p in copy.encoders["video"].named_parameters())

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="eval.device=cuda: torch sees no CUDA device"):
        PeriodicEval(load_config(None, [*TINY, "eval.device=cuda"]), "nowhere")
