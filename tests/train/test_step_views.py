"""The training step's views: made from the outputs' and terms' declarations alone."""

from __future__ import annotations

import pytest
import torch

from usvs_dist.config import load_config
from usvs_dist.data import views
from usvs_dist.data.scan_mix import scan_code
from usvs_dist.losses import (
    SAME_SCAN_TARGETS,
    TERMS,
    Term,
    check_objective,
    info_nce,
    objective_parts,
    recipe_reads,
    total_loss,
)
from usvs_dist.models import OUTPUTS, Output, build_model, encoder_state_dicts
from usvs_dist.train.step import BatchViews

TINY = ["model.width=4", "model.embed_dim=8", "data.frame_size=32"]


def _batch(n: int = 4) -> dict:
    return {
        "video": torch.rand(n, 1, 6, 32, 32),
        "audio": torch.randn(n, 1, 64, 201),
        "image": torch.rand(n, 1, 32, 32),
        "image_label": torch.tensor([0, 1, -1, 1])[:n],
        "scan": ["a", "a", "b", "a"][:n],
        "t0": torch.tensor([0.0, 2.0, 0.0, 30.0], dtype=torch.float64)[:n],
    }


@pytest.mark.parametrize(
    ("recipe", "inputs", "targets"),
    [
        ("usvs2020", {"video", "audio"}, set()),
        ("dual2024", {"video", "audio", "image"}, set()),
        ("isbi2020", {"pretext_clips"}, {"order_target", "rotation_target"}),
        ("awcl2022", {"image_view1", "image_view2"}, {"anatomy_label"}),
    ],
)
def test_each_recipe_gets_the_views_its_outputs_consume(recipe, inputs, targets):
    # The papers' objectives: every other clip a negative, so no scan targets (see the next test).
    cfg = load_config(None, [f"objective.recipe={recipe}", "objective.same_scan_negatives=keep", *TINY])
    needs = check_objective(cfg.objective)
    made_inputs, made_targets = BatchViews(cfg, needs)(_batch(), torch.device("cpu"), torch.float32)
    assert set(made_inputs) == inputs and set(made_targets) == targets
    out = build_model(cfg, needs.outputs)(made_inputs)
    assert set(out) == needs.outputs
    parts = objective_parts({**out, **made_targets}, cfg.objective, 0.5)
    assert torch.isfinite(total_loss(parts))


@pytest.mark.parametrize("recipe", ["usvs2020", "dual2024", "isbi2020", "awcl2022"])
@pytest.mark.parametrize("mode", ["mask", "window"])
def test_same_scan_negatives_add_the_scan_targets_to_the_gathered_recipes(recipe, mode):
    cfg = load_config(None, [f"objective.recipe={recipe}", f"objective.same_scan_negatives={mode}", *TINY])
    needs = check_objective(cfg.objective)
    gathered = recipe != "isbi2020"  # the pretext tasks contrast nothing
    assert (SAME_SCAN_TARGETS <= needs.targets) == gathered
    batch = _batch()
    made_inputs, made_targets = BatchViews(cfg, needs)(batch, torch.device("cpu"), torch.float32)
    if gathered:
        assert made_targets["scan_id"].tolist() == [scan_code(s) for s in batch["scan"]]
        assert made_targets["scan_id"].dtype == torch.int64
        assert torch.equal(made_targets["clip_t0"], batch["t0"])
    model = build_model(cfg, needs.outputs)
    parts = objective_parts({**model(made_inputs), **made_targets}, cfg.objective, 0.5)
    loss = total_loss(parts)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_loss_on_a_new_view_is_its_term_its_output_and_its_view(monkeypatch):
    # docs/architecture.md's worked example: InfoNCE between a clip and the clip played backwards.
    def reversed_video(b: views.ViewBatch) -> dict[str, torch.Tensor]:
        return {"reversed_video": b.moved("video").flip(2)}

    def v_vrev_nce(o, c, progress):
        return info_nce(o["video"], o["video_reversed"], c.temperature, symmetric=c.symmetric), {}

    monkeypatch.setitem(views.VIEWS, "reversed", views.View(reversed_video, inputs=("reversed_video",)))
    monkeypatch.setitem(OUTPUTS, "video_reversed", Output(("video",), ("reversed_video",)))
    monkeypatch.setitem(
        TERMS,
        "v_vrev_nce",
        Term(
            v_vrev_nce,
            frozenset({"video", "video_reversed"}),
            reads=("objective.temperature", "objective.symmetric"),
            paper="example",
        ),
    )
    cfg = load_config(None, ["objective.recipe=custom", "objective.terms=[{term: v_vrev_nce}]", *TINY])
    needs = check_objective(cfg.objective)
    assert needs.outputs == {"video", "video_reversed"}
    assert recipe_reads(cfg.objective, "objective.temperature")
    assert not recipe_reads(cfg.objective, "objective.margin")

    batch = _batch()
    inputs, targets = BatchViews(cfg, needs)(batch, torch.device("cpu"), torch.float32)
    assert set(inputs) == {"video", "reversed_video"} and not targets
    assert torch.equal(inputs["reversed_video"], batch["video"].flip(2))

    model = build_model(cfg, needs.outputs)
    assert set(encoder_state_dicts(model)) == {"video_encoder", "video_head"}
    out = model(inputs)
    assert set(out) == {"video", "video_reversed"} and out["video_reversed"].shape == (4, 8)
    parts = objective_parts(out, cfg.objective, 0.0)
    assert set(parts) == {"v_vrev_nce_loss"}
    parts["v_vrev_nce_loss"].backward()
    assert next(model.encoders["video"].parameters()).grad is not None


def test_an_output_no_view_makes_is_named():
    with pytest.raises(ValueError, match=r"makes \['nowhere'\]"):
        views.views_for({"nowhere"}, set())


def test_isbi2020_encodes_one_shuffled_and_rotated_clip_for_both_heads():
    cfg = load_config(None, ["objective.recipe=isbi2020", *TINY])
    needs = check_objective(cfg.objective)
    batch = _batch()
    torch.manual_seed(0)
    inputs, targets = BatchViews(cfg, needs)(batch, torch.device("cpu"), torch.float32)
    # One input: the K = 3 sub-clips of 2 frames in the drawn order, turned as drawn, seen
    # through the centred disc; the two targets describe that same clip.
    assert set(inputs) == {"pretext_clips"} and set(targets) == {"order_target", "rotation_target"}
    torch.manual_seed(0)
    expected, order, rotation = views.pretext_views(
        batch["video"], views.order_permutations(3), 4, cfg.objective.pretext.circle_radius
    )
    assert torch.equal(inputs["pretext_clips"], expected)
    assert torch.equal(targets["order_target"], order) and torch.equal(targets["rotation_target"], rotation)

    model = build_model(cfg, needs.outputs)
    calls = []
    model.encoders["video"].register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    out = model(inputs)
    assert calls == [(4 * 3, 1, 2, 32, 32)]  # the encoder runs once, on the B x K sub-clips
    assert out["order_logits"].shape == (4, 6) and out["rotation_logits"].shape == (4, 4)
    parts = objective_parts({**out, **targets}, cfg.objective, 0.0)
    assert {"order_loss", "transform_loss"} <= set(parts)
    total_loss(parts).backward()
    for head in ("order", "rotation"):
        assert next(model.pretext[head].parameters()).grad is not None, head
