"""Every recipe runs through `python -m usvs_dist.train` on 2 Ray workers and logs each named part."""

from __future__ import annotations

import os

import pytest

from tests.train.runner import steps_logged, train

RECIPES = {
    "usvs2020": ["selfpaced_va_loss", "selfpaced_admitted", "selfpaced_lambda"],
    "dual2024": [
        "mmcl_a_loss",
        "mmcl_i_loss",
        "mmsl_va_loss",
        "mmsl_vi_loss",
        "va_nce",
        "v_va_nce",
        "vi_nce",
        "v_vi_nce",
    ],
    "isbi2020": ["order_loss", "transform_loss", "order_accuracy", "rotation_accuracy"],
    "awcl2022": ["anatomy_loss", "anatomy_positive_share"],
    "custom": ["va_nce_loss", "vi_triplet_loss"],
}
EXTRA = {"custom": ["objective.terms=[{term: va_nce, weight: 1.0}, {term: vi_triplet, weight: 0.5}]"]}
DECODER = {"isbi2020": "torchcodec", "dual2024": "auto"}
"""data.decoder per recipe (the others: decord, the default); torchcodec where it is usable."""


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_trains_end_to_end_and_logs_its_parts(recipe, phantom_shards, tmp_path):
    from tests.conftest import REQUIRE_DECODERS
    from usvs_dist.data.backends import choose_decoder, torchcodec_unusable

    decoder = DECODER.get(recipe, "decord")
    required = "torchcodec" in os.environ.get(REQUIRE_DECODERS, "").split(",")
    if decoder == "torchcodec" and not required and torchcodec_unusable():
        decoder = "auto"  # the recipe still runs here, with Decord; CI requires TorchCodec
    run = train(
        tmp_path,
        phantom_shards,
        f"objective.recipe={recipe}",
        f"data.decoder={decoder}",
        *EXTRA.get(recipe, []),
        "train.steps=4",
        "train.checkpoint_every=4",
        "train.num_workers=2",
        "optim.warmup_steps=0",
    )
    client = run.client
    tags = client.get_run(run.run_id).data.tags
    assert tags["recipe"] == recipe
    assert tags["usvs.decoder"].startswith(f"{choose_decoder(decoder)} ") and tags["usvs.decoder"].endswith(
        " on CPU"
    )
    for metric in ["loss", *RECIPES[recipe]]:
        assert steps_logged(client, run.run_id, metric) == [1, 2, 3, 4], metric
    loss = {m.step: m.value for m in client.get_metric_history(run.run_id, "loss")}
    parts = [
        {m.step: m.value for m in client.get_metric_history(run.run_id, k)}
        for k in RECIPES[recipe]
        if k.endswith("_loss")
    ]
    for step, value in loss.items():
        assert value == pytest.approx(sum(p[step] for p in parts), rel=1e-4)
    if recipe == "usvs2020":
        lam = [
            m.value
            for m in sorted(client.get_metric_history(run.run_id, "selfpaced_lambda"), key=lambda m: m.step)
        ]
        assert lam[0] == pytest.approx(0.5) and lam == sorted(lam) and lam[-1] == pytest.approx(1.0)
