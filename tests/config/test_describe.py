"""Config keys described from the schema: docstrings read with ast, every key in `--help`."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

import pytest

from usvs_dist.config import RootConfig, TrainConfig, flatten
from usvs_dist.config.describe import describe, field_docs, type_name
from usvs_dist.config.schema import Section


def _sections(cls: type) -> list[type]:
    found = [cls]
    for hint in get_type_hints(cls).values():
        if isinstance(hint, type) and issubclass(hint, Section):
            found += _sections(hint)
    return found


@pytest.mark.parametrize("cls", _sections(RootConfig), ids=lambda c: c.__name__)
def test_every_setting_has_its_docstring_read_from_the_source(cls):
    hints = get_type_hints(cls)
    settings = [f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]
    docs = field_docs(cls)
    assert [name for name in settings if not docs.get(name)] == []
    assert set(docs) == set(settings)  # a section-typed field has none; no other string is taken


def test_a_docstring_is_paired_with_the_field_above_it():
    docs = field_docs(TrainConfig)
    assert docs["log_every"].startswith("Log metrics every this many steps")
    assert docs["console"].startswith("Rank 0 prints a plain progress line")
    assert "\n" not in docs["console"] and "  " not in docs["console"]  # folded onto one line


def test_every_key_is_described_with_type_default_and_docstring():
    text = describe()
    for key in flatten(RootConfig()):
        assert f"  {key} (" in text, key
    assert "  train.console (bool, default true)\n      Rank 0 prints a plain progress line" in text
    assert "  data.split (one of train|val|test, default train)" in text
    assert "  data.shards (str, default '')" in text
    assert "  objective.terms (list[{term: str, weight: float}], default [])" in text
    assert "\ndata.augment: Clip augmentation in the training loader" in text


def test_a_subset_of_keys_can_be_described():
    text = describe(keep=("eval.", "data."))
    keys = [
        line.split()[0] for line in text.splitlines() if line.startswith("  ") and not line.startswith("   ")
    ]
    assert keys and all(k.startswith(("eval.", "data.")) for k in keys)
    assert "  eval.folds (int, default 5)" in text and "model." not in "".join(keys)


def test_type_names():
    assert type_name(int | None) == "int or null"
    assert type_name(dict[str, float]) == "dict[str, float]"
