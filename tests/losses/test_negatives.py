"""Same-scan negatives: the exclusion mask against its looped definition, its symmetry, and that
it never removes a positive; the losses' masked references live beside each loss's tests."""

from __future__ import annotations

import pytest
import torch

from tests.loss_checks import SCANS_N, T0_N, WINDOW_S, naive_excluded
from usvs_dist.config import ConfigError, load_config
from usvs_dist.losses import same_scan_exclusions


@pytest.mark.parametrize("mode", ["mask", "window"])
def test_exclusions_match_the_looped_definition(mode):
    got = same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S)
    assert got.dtype == torch.bool and got.tolist() == naive_excluded(SCANS_N, T0_N, mode)
    # Symmetric in the two clips (one mask serves both directions), never a row's own column.
    assert torch.equal(got, got.T) and not got.diagonal().any()


def test_window_is_inclusive_and_keeps_far_clips_of_the_scan():
    got = same_scan_exclusions(SCANS_N, T0_N, "window", WINDOW_S)
    assert got[0, 1] and got[0, 5]  # 2 s and exactly 4 s apart
    assert not got[4, 6] and not got[0, 9]  # 4.5 s and 14 s apart
    assert got[3, 7]  # the same clip twice is a near-duplicate, not a negative
    masked = same_scan_exclusions(SCANS_N, T0_N, "mask", WINDOW_S)
    assert masked[4, 6] and masked[0, 9] and (masked | got).equal(masked)
    # A window as long as the scan is the mask.
    assert torch.equal(same_scan_exclusions(SCANS_N, T0_N, "window", 1e6), masked)


def test_keep_excludes_nothing_and_a_bad_mode_is_named():
    assert same_scan_exclusions(SCANS_N, T0_N, "keep", WINDOW_S) is None
    with pytest.raises(ValueError, match="same_scan_negatives='all'"):
        same_scan_exclusions(SCANS_N, T0_N, "all", WINDOW_S)
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        same_scan_exclusions(SCANS_N, T0_N[:3], "mask", WINDOW_S)


def test_one_scan_per_batch_leaves_only_the_positives():
    got = same_scan_exclusions(torch.zeros(4, dtype=torch.int64), torch.arange(4.0), "mask", WINDOW_S)
    assert torch.equal(got, ~torch.eye(4, dtype=torch.bool))


def test_config_choices_and_window_range():
    cfg = load_config(None, ["objective.same_scan_negatives=mask", "objective.same_scan_window_s=2.5"])
    assert cfg.objective.same_scan_negatives == "mask" and cfg.objective.same_scan_window_s == 2.5
    assert load_config(None, []).objective.same_scan_negatives == "window"
    with pytest.raises(ConfigError, match="objective.same_scan_negatives"):
        load_config(None, ["objective.same_scan_negatives=drop"])
    with pytest.raises(ConfigError, match=r"objective.same_scan_window_s=0.0 is invalid: expected > 0"):
        load_config(None, ["objective.same_scan_window_s=0"])
