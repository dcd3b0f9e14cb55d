"""Recipes: the parts each paper's objective is made of, their arithmetic, and config checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from usvs_dist.config import ConfigError, SelfPacedConfig, flatten, load_config
from usvs_dist.losses import (
    ALWAYS_READ,
    RECIPES,
    SAME_SCAN_KEYS,
    SAME_SCAN_TARGETS,
    TERMS,
    anatomy_info_nce,
    check_objective,
    info_nce,
    objective_parts,
    recipe_reads,
    same_scan_exclusions,
    self_paced_info_nce,
    total_loss,
)
from usvs_dist.losses.triplet import hardest_triplet


def _values(n: int = 6, d: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(n, d, generator=g) for k in ("video", "audio", "image", "va", "vi")}
    out |= {"image_view1": torch.randn(n, d, generator=g), "image_view2": torch.randn(n, d, generator=g)}
    out |= {"order_logits": torch.randn(n, 6, generator=g), "rotation_logits": torch.randn(n, 4, generator=g)}
    out |= {
        "order_target": torch.randint(0, 6, (n,), generator=g),
        "rotation_target": torch.randint(0, 4, (n,), generator=g),
        "anatomy_label": torch.tensor([0, 0, 1, 1, -1, 2]),
        # Two scans of three adjacent 2 s clips: the default window leaves out same-scan negatives.
        "scan_id": torch.tensor([7, 7, 7, 9, 9, 9])[:n],
        "clip_t0": torch.tensor([0.0, 2.0, 10.0, 0.0, 2.0, 4.0], dtype=torch.float64)[:n],
    }
    return out


@pytest.mark.parametrize(
    ("recipe", "loss_parts", "logged"),
    [
        ("usvs2020", {"selfpaced_va_loss"}, {"selfpaced_admitted", "selfpaced_lambda"}),
        (
            "dual2024",
            {"mmcl_a_loss", "mmcl_i_loss", "mmsl_va_loss", "mmsl_vi_loss"},
            {"va_nce", "v_va_nce", "vi_nce", "v_vi_nce"},
        ),
        ("isbi2020", {"order_loss", "transform_loss"}, {"order_accuracy", "rotation_accuracy"}),
        ("awcl2022", {"anatomy_loss"}, {"anatomy_positive_share"}),
    ],
)
def test_each_recipe_returns_its_named_parts(recipe, loss_parts, logged):
    cfg = load_config(None, [f"objective.recipe={recipe}"]).objective
    parts = objective_parts(_values(), cfg, 0.5)
    assert set(parts) == loss_parts | logged
    assert total_loss(parts).item() == pytest.approx(sum(parts[k].item() for k in loss_parts))


def test_dual2024_is_eq_13_with_pi_and_part_weights():
    cfg = load_config(
        None,
        [
            "objective.recipe=dual2024",
            "objective.pi=0.3",
            "objective.weights={mmsl_vi: 0.5}",
            "objective.same_scan_negatives=keep",  # eq. 13 as the paper has it: every negative
        ],
    ).objective
    v = _values()
    parts = objective_parts(v, cfg, 0.0)
    tau = cfg.temperature
    l_a = 0.3 * info_nce(v["video"], v["audio"], tau) + 0.7 * info_nce(v["video"], v["va"], tau)
    l_i = 0.3 * info_nce(v["video"], v["image"], tau) + 0.7 * info_nce(v["video"], v["vi"], tau)
    assert parts["mmcl_a_loss"].item() == pytest.approx(l_a.item(), abs=1e-6)
    assert parts["mmcl_i_loss"].item() == pytest.approx(l_i.item(), abs=1e-6)
    assert parts["mmsl_va_loss"].item() == pytest.approx(hardest_triplet(v["video"], v["audio"], 0.2).item())
    assert parts["mmsl_vi_loss"].item() == pytest.approx(
        0.5 * hardest_triplet(v["video"], v["image"], 0.2).item()
    )


def test_custom_recipe_weighs_listed_terms():
    cfg = load_config(
        None,
        [
            "objective.recipe=custom",
            "objective.terms=[{term: va_nce, weight: 2.0}, {term: vi_triplet, weight: 0.5}]",
            "objective.same_scan_negatives=keep",  # compared with plain info_nce below
        ],
    ).objective
    v = _values()
    parts = objective_parts(v, cfg, 0.0)
    assert set(parts) == {"va_nce_loss", "vi_triplet_loss"}
    assert parts["va_nce_loss"].item() == pytest.approx(2 * info_nce(v["video"], v["audio"], 0.1).item())
    assert check_objective(cfg).outputs == {"video", "audio", "image"}


def test_requirements_follow_the_terms():
    needs = {
        r: check_objective(load_config(None, [f"objective.recipe={r}"]).objective)
        for r in ("usvs2020", "dual2024", "isbi2020", "awcl2022")
    }
    assert needs["usvs2020"].outputs == {"video", "audio"} and not needs["usvs2020"].needs_labels
    assert needs["dual2024"].outputs == {"video", "audio", "image", "va", "vi"}
    assert needs["isbi2020"].targets == {"order_target", "rotation_target"}
    assert needs["awcl2022"].needs_labels
    assert all(t.paper for t in TERMS.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.recipe=simclr"], "objective.recipe='simclr' is invalid: expected one of usvs2020"),
        (["objective.recipe=custom", "objective.terms=[{term: nope}]"], r"objective.terms\[0\].term='nope'"),
        (
            ["objective.recipe=custom", "objective.terms=[{term: va_nce}, {term: va_nce}]"],
            r"objective.terms\[1\].term='va_nce' is listed twice",
        ),
        (["objective.weights={mmcl_a: 2}"], "objective.weights.mmcl_a is not a part of recipe 'usvs2020'"),
    ],
)
def test_bad_objectives_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_objective(load_config(None, overrides).objective)


def test_custom_needs_terms_and_terms_need_custom():
    with pytest.raises(ValueError, match="objective.terms"):
        load_config(None, ["objective.recipe=custom"])
    with pytest.raises(ValueError, match="objective.terms"):
        load_config(None, ["objective.terms=[{term: va_nce}]"])


def test_declared_config_keys_drive_recipe_reads(monkeypatch):
    def reads(recipe: str, key: str, *overrides: str) -> bool:
        return recipe_reads(load_config(None, [f"objective.recipe={recipe}", *overrides]).objective, key)

    # objective.pi is declared by dual2024's parts, not by any term.
    assert reads("dual2024", "objective.pi") and not reads("usvs2020", "objective.pi")
    assert reads("usvs2020", "objective.self_paced.kappa") and not reads(
        "dual2024", "objective.self_paced.kappa"
    )
    assert reads("dual2024", "objective.margin") and not reads("usvs2020", "objective.margin")
    assert reads("awcl2022", "objective.temperature") and not reads("awcl2022", "objective.symmetric")
    assert reads("isbi2020", "objective.pretext.transform_weight") and not reads(
        "isbi2020", "objective.anatomy"
    )
    assert reads("dual2024", "objective.weights.mmcl_a") and not reads("usvs2020", "objective.weights.mmcl_a")
    assert reads("usvs2020", "train.steps")
    custom = ("objective.recipe=custom", "objective.terms=[{term: order_ce}]")
    assert reads("custom", "objective.pretext.subclips", *custom[1:])
    # The order head reads the rotated clip too (isbi2020's one input), but not the transform's weight.
    assert reads("custom", "objective.pretext.rotations", *custom[1:])
    assert not reads("custom", "objective.pretext.transform_weight", *custom[1:])
    # The declaration is the only source: a term that declares a key makes its recipes read it.
    monkeypatch.setitem(
        TERMS, "va_selfpaced_nce", replace(TERMS["va_selfpaced_nce"], reads=("objective.margin",))
    )
    assert reads("usvs2020", "objective.margin") and not reads("usvs2020", "objective.temperature")


def test_every_objective_key_is_declared_by_a_term_or_recipe():
    declared = {
        *ALWAYS_READ,
        *(k for t in TERMS.values() for k in t.reads),
        *(k for r in RECIPES.values() for k in r.reads),
    }
    keys = [k for k in flatten(load_config(None, [])) if k.startswith("objective.")]
    assert keys
    for key in keys:
        assert any(key == k or key.startswith(f"{k}.") for k in declared), key


def test_bad_objectives_are_config_errors():
    with pytest.raises(ConfigError, match="objective.recipe='simclr'"):
        check_objective(load_config(None, ["objective.recipe=simclr"]).objective)


def _direct(v: dict[str, torch.Tensor], exclude: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Each gathered term as its loss function computes it, given the excluded negatives or None."""
    sp, x = SelfPacedConfig(), {"exclude_BN": exclude}
    return {
        "va_nce": info_nce(v["video"], v["audio"], 0.1, **x),
        "vi_nce": info_nce(v["video"], v["image"], 0.1, **x),
        "v_va_nce": info_nce(v["video"], v["va"], 0.1, **x),
        "v_vi_nce": info_nce(v["video"], v["vi"], 0.1, **x),
        "va_triplet": hardest_triplet(v["video"], v["audio"], 0.2, **x),
        "vi_triplet": hardest_triplet(v["video"], v["image"], 0.2, **x),
        "va_selfpaced_nce": self_paced_info_nce(v["video"], v["audio"], 0.1, 0.5, sp, **x)[0],
        "anatomy_nce": anatomy_info_nce(
            v["image_view1"], v["image_view2"], v["anatomy_label"], 0.1, 0.5, **x
        )[0],
    }


def test_keep_is_exactly_the_unmasked_loss_and_the_other_modes_mask_every_gathered_term():
    v = _values()
    keep = load_config(None, ["objective.same_scan_negatives=keep"]).objective
    window = load_config(None, []).objective
    no_scans = {k: t for k, t in v.items() if k not in SAME_SCAN_TARGETS}
    unmasked = _direct(v, None)
    assert set(unmasked) == {name for name, t in TERMS.items() if t.same_scan}
    exclude = same_scan_exclusions(v["scan_id"], v["clip_t0"], "window", window.same_scan_window_s)
    masked = _direct(v, exclude)
    assert exclude.any() and masked["va_nce"].item() != pytest.approx(unmasked["va_nce"].item(), abs=1e-4)
    for name in unmasked:
        # keep reads no scan target and gives the unmasked numbers bit for bit.
        assert torch.equal(TERMS[name].fn(no_scans, keep, 0.5)[0], unmasked[name]), name
        assert torch.equal(TERMS[name].fn(v, window, 0.5)[0], masked[name]), name


def test_gathered_terms_declare_the_same_scan_keys_and_read_the_scan_targets_unless_keep():
    for name, term in TERMS.items():
        gathered = name not in ("order_ce", "rotation_ce")
        assert term.same_scan == gathered and (set(SAME_SCAN_KEYS) <= set(term.reads)) == gathered, name
    for recipe in ("usvs2020", "dual2024", "awcl2022"):
        for mode, reads in (("keep", False), ("mask", True), ("window", True)):
            cfg = load_config(None, [f"objective.recipe={recipe}", f"objective.same_scan_negatives={mode}"])
            assert (SAME_SCAN_TARGETS <= check_objective(cfg.objective).targets) == reads, (recipe, mode)
            # The window's width changes the loss in window mode only (a sweep of it is refused else).
            assert recipe_reads(cfg.objective, "objective.same_scan_window_s") == (mode == "window")
            assert recipe_reads(cfg.objective, "objective.same_scan_negatives")
    isbi = load_config(None, ["objective.recipe=isbi2020"]).objective
    assert not check_objective(isbi).targets & SAME_SCAN_TARGETS
    assert not recipe_reads(isbi, "objective.same_scan_negatives")
