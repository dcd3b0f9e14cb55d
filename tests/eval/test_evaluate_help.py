"""`python -m usvs_dist.evaluate --help`: options with defaults and the overridable keys, without torch."""

from __future__ import annotations

import re

from tests.sharding.test_help import _help


def test_help_lists_the_overridable_keys_without_importing_torch():
    text, loaded = _help("usvs_dist.evaluate")
    assert loaded == []
    flat = " ".join(text.split())
    assert "(default: eval_out)" in flat and "--task {planes,saliency,retrieval}" in flat
    assert "--device {auto,cpu,cuda}" in flat
    keys = re.findall(r"^  ([a-z_]+(?:\.[a-z_0-9]+)+) \(", text, re.M)
    assert "eval.folds" in keys and "data.shards" in keys and "model.image_weights" in keys
    assert all(k.startswith(("eval.", "data.", "model.")) for k in keys), keys
    assert "model.width" not in keys and "train.steps" not in keys


def test_the_task_names_are_the_registry_s():
    from usvs_dist.eval.tasks import TASKS
    from usvs_dist.evaluate import TASK_NAMES

    assert TASK_NAMES == tuple(TASKS)
