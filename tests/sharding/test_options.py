"""Build options: non-finite numbers are refused before anything is read or written."""

from __future__ import annotations

import pytest

from sharding.__main__ import main as shard_main
from sharding.build import BuildError, BuildOptions


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ("clip_seconds", "--clip-seconds"),
        ("stride_seconds", "--stride-seconds"),
        ("min_speech_ratio", "--min-speech-ratio"),
        ("fps", "--fps"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_build_options_are_refused(option, flag, value):
    with pytest.raises(BuildError, match=rf"^{flag} must be a finite number, got {value}$"):
        BuildOptions(**{option: value}).validate()


def test_non_finite_split_and_cli_values_are_refused(capsys, tmp_path):
    with pytest.raises(BuildError, match=r"--split must be a finite number"):
        BuildOptions(split_fractions=(float("nan"), 0.5, 0.5)).validate()
    args = ["build", "m.csv", "--out", str(tmp_path / "o"), "--clip-seconds", "inf"]
    assert shard_main(args) == 2
    assert "--clip-seconds must be a finite number, got inf" in capsys.readouterr().err
