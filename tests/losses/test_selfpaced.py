"""usvs2020's affinity-aware self-paced negatives: schedule, admission, loss, gathered ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.loss_checks import SCANS_N, T0_N, WINDOW_S, assert_two_ranks_match_one, naive_excluded, sgd_losses
from usvs_dist.config import SelfPacedConfig
from usvs_dist.losses import (
    admit_negatives,
    admitted_share,
    affinity,
    info_nce,
    same_scan_exclusions,
    self_paced_info_nce,
)

TAU = 0.1


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("linear", [0.5, 0.625, 0.75, 1.0, 1.0]),
        ("cosine", [0.5, 0.5 + 0.5 * (1 - math.cos(math.pi / 4)) / 2, 0.75, 1.0, 1.0]),
        ("step", [0.5, 0.625, 0.75, 1.0, 1.0]),
    ],
)
def test_schedule_rises_from_lambda0_to_one_over_the_ramp(schedule, expected):
    cfg = SelfPacedConfig(lambda0=0.5, schedule=schedule, ramp_fraction=0.5, stages=4)
    got = [admitted_share(p, cfg) for p in (0.0, 0.125, 0.25, 0.5, 0.9)]
    assert got == pytest.approx(expected)
    # The step schedule holds between stairs.
    if schedule == "step":
        assert admitted_share(0.2, cfg) == pytest.approx(0.625)


def test_admission_matches_a_per_anchor_quantile_reference():
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(6, 6, generator=g) * 2 - 1
    share, kappa = 0.5, 0.6
    got = admit_negatives(aff, share, kappa)
    for k in range(6):
        negatives = [aff[k, j].item() for j in range(6) if j != k]
        threshold = np.quantile(negatives, share)  # numpy's default: linear interpolation
        for j in range(6):
            expected = j != k and aff[k, j].item() <= threshold and aff[k, j].item() <= kappa
            assert bool(got[k, j]) == expected, (k, j)


def test_affinity_is_the_mean_of_the_two_modalities_cosines():
    g = torch.Generator().manual_seed(1)
    v, a = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    vv = F.normalize(v, dim=1) @ F.normalize(v, dim=1).T
    aa = F.normalize(a, dim=1) @ F.normalize(a, dim=1).T
    assert torch.allclose(affinity(v, a, "mean"), (vv + aa) / 2, atol=1e-6)
    assert torch.allclose(affinity(v, a, "video"), vv, atol=1e-6)
    assert not affinity(v.requires_grad_(), a, "mean").requires_grad


def test_everything_admitted_is_plain_info_nce_and_nothing_admitted_is_zero():
    g = torch.Generator().manual_seed(2)
    v, a = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    all_in = SelfPacedConfig(lambda0=1.0, kappa=1.0)
    loss, extras = self_paced_info_nce(v, a, TAU, 0.0, all_in)
    assert loss.item() == pytest.approx(info_nce(v, a, TAU).item(), abs=1e-6)
    assert extras["selfpaced_admitted"].item() == pytest.approx(1.0)
    # kappa below every affinity: only the positive is left, so each softmax is certain.
    none_in = SelfPacedConfig(lambda0=1.0, kappa=-0.999)
    loss, extras = self_paced_info_nce(v, a, TAU, 0.0, none_in)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and extras["selfpaced_admitted"].item() == 0.0


def test_closed_form_on_aligned_orthogonal_pairs():
    # All negatives have affinity 0, so all are admitted at any share: InfoNCE's closed form.
    n, tau = 8, 0.5
    x = torch.eye(n) * 3.0
    loss, extras = self_paced_info_nce(x, x.clone(), tau, 0.0, SelfPacedConfig(lambda0=0.25))
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + n - 1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert extras["selfpaced_admitted"].item() == 1.0


def test_matches_naive_reference_and_admits_the_easy_half_first():
    g = torch.Generator().manual_seed(3)
    v, a = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    cfg = SelfPacedConfig(lambda0=0.5, kappa=0.95)
    loss, extras = self_paced_info_nce(v, a, TAU, 0.0, cfg, symmetric=False)
    vn, an = F.normalize(v, dim=1), F.normalize(a, dim=1)
    aff = ((vn @ vn.T) + (an @ an.T)) / 2
    total, admitted = 0.0, 0
    for k in range(9):
        negatives = [aff[k, j].item() for j in range(9) if j != k]
        threshold = min(np.quantile(negatives, 0.5), 0.95)
        cols = [j for j in range(9) if j == k or aff[k, j].item() <= threshold]
        admitted += len(cols) - 1
        s = torch.stack([vn[k] @ an[j] / TAU for j in cols])
        total += -(s[cols.index(k)] - torch.logsumexp(s, 0)).item()
    assert loss.item() == pytest.approx(total / 9, abs=1e-5)
    assert extras["selfpaced_admitted"].item() == pytest.approx(admitted / (9 * 8))
    assert 0.4 < extras["selfpaced_admitted"].item() < 0.7


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(4)
    x_in, y_in = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    fx, fy = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    cfg = SelfPacedConfig()
    losses = sgd_losses(
        lambda step: self_paced_info_nce(fx(x_in), fy(y_in), TAU, step / 40, cfg),
        [*fx.parameters(), *fy.parameters()],
        20,
    )
    assert losses[-1] < 0.5 * losses[0]


def _self_paced(v, a, labels):
    return self_paced_info_nce(v, a, TAU, 0.1, SelfPacedConfig(lambda0=0.4, kappa=0.5))


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    g = torch.Generator().manual_seed(5)
    v, a = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    assert_two_ranks_match_one(_self_paced, [v, a])


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("mode", ["mask", "window"])
def test_same_scan_clips_are_no_negatives_not_even_in_the_quantile(mode, symmetric):
    g = torch.Generator().manual_seed(6)
    v, a = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    cfg = SelfPacedConfig(lambda0=0.5, kappa=0.95)
    excluded = naive_excluded(SCANS_N, T0_N, mode)
    exclude = same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S)
    loss, extras = self_paced_info_nce(v, a, TAU, 0.0, cfg, symmetric=symmetric, exclude_BN=exclude)
    vn, an = F.normalize(v, dim=1), F.normalize(a, dim=1)
    aff = ((vn @ vn.T) + (an @ an.T)) / 2
    forward, backward, admitted, candidates = 0.0, 0.0, 0, 0
    for k in range(10):
        negatives = [j for j in range(10) if j != k and not excluded[k][j]]
        candidates += len(negatives)
        threshold = min(np.quantile([aff[k, j].item() for j in negatives], 0.5), 0.95)
        cols = [k] + [j for j in negatives if aff[k, j].item() <= threshold]
        admitted += len(cols) - 1
        s = torch.stack([vn[k] @ an[j] / TAU for j in cols])  # video anchor k
        forward += -(s[0] - torch.logsumexp(s, 0)).item()
        s = torch.stack([an[k] @ vn[j] / TAU for j in cols])  # audio anchor k: the same clips
        backward += -(s[0] - torch.logsumexp(s, 0)).item()
    expected = 0.5 * (forward + backward) / 10 if symmetric else forward / 10
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert extras["selfpaced_admitted"].item() == pytest.approx(admitted / candidates)


def test_an_anchor_without_negatives_admits_none():
    aff = torch.rand(3, 3)
    exclude = ~torch.eye(3, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = False
    got = admit_negatives(aff, 1.0, 1.0, exclude)
    assert got.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def _same_scan_self_paced(v, a, scan, t0, labels):
    # Both modes in one spawn (each costs seconds): their sum's value and gradients.
    def one(mode):
        exclude = same_scan_exclusions(scan, t0, mode, WINDOW_S)
        return self_paced_info_nce(
            v, a, TAU, 0.1, SelfPacedConfig(lambda0=0.4, kappa=0.5), exclude_BN=exclude
        )[0]

    return one("mask") + 0.5 * one("window")


def test_two_gloo_ranks_equal_one_process_without_same_scan_negatives():
    g = torch.Generator().manual_seed(7)
    v, a = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    assert_two_ranks_match_one(_same_scan_self_paced, [v, a, SCANS_N, T0_N])
