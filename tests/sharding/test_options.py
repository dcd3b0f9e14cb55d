"""Build options: refused when built (non-finite numbers, ranges), before anything is read or written."""

from __future__ import annotations

import pytest

from sharding.__main__ import main as shard_main
from sharding.build import BuildError, BuildOptions, Execution, OptionError


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
        BuildOptions(**{option: value})


def test_non_finite_split_and_cli_values_are_refused(capsys, tmp_path):
    with pytest.raises(BuildError, match=r"--split must be a finite number"):
        BuildOptions(split_fractions=(float("nan"), 0.5, 0.5))
    args = ["build", "m.csv", "--out", str(tmp_path / "o"), "--clip-seconds", "inf"]
    assert shard_main(args) == 2
    assert "--clip-seconds must be a finite number, got inf" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 33}, "--size must be an even integer >= 16, got 33"),
        ({"fps": 500.0}, "--fps must be in [1, 120], got 500.0"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "--split must be three fractions train,val,test summing to 1"),
        ({"mask": "oval"}, "--mask 'oval' is invalid"),
    ],
)
def test_invalid_options_are_refused_when_built_as_config_errors(options, message):
    from usvs_dist.config import ConfigError

    with pytest.raises(OptionError) as err:
        BuildOptions(**options)
    assert message in str(err.value)
    # One error class for bad settings in both tools (usvs_format's), still a BuildError here.
    assert isinstance(err.value, ConfigError) and isinstance(err.value, BuildError)
    with pytest.raises(ConfigError, match=r"^--workers must be >= 1, got 0$"):
        Execution(workers=0)
