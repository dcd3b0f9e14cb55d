"""awcl2022's anatomy-aware loss: soft-target reference, limits, closed form, SGD, gathered ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.loss_checks import SCANS_N, T0_N, WINDOW_S, assert_two_ranks_match_one, naive_excluded, sgd_losses
from usvs_dist.config import AnatomyConfig
from usvs_dist.data import schema
from usvs_dist.data.views import anatomy_labels
from usvs_dist.losses import anatomy_info_nce, info_nce, same_scan_exclusions

TAU = 0.2


def naive_anatomy(z1, z2, labels, tau, ratio, excluded: list[list[bool]] | None = None) -> float:
    """(1 - r) instance InfoNCE + r SupCon over the other same-label samples, as loops, symmetrised;
    samples excluded for k (same-scan neighbours) leave k's denominator unless they are positives."""
    n = z1.shape[0]

    def one_way(x, y):
        total = 0.0
        for k in range(n):
            others = [j for j in range(n) if j != k and labels[j] == labels[k] and labels[k] >= 0]
            cols = [j for j in range(n) if j == k or j in others or not (excluded and excluded[k][j])]
            s = torch.full((n,), float("-inf"))
            s[cols] = torch.stack([F.cosine_similarity(x[k], y[j], dim=0) / tau for j in cols])
            log_p = s - torch.logsumexp(s, 0)
            if others:
                sup = -sum(log_p[j] for j in others) / len(others)
                total += ((1 - ratio) * -log_p[k] + ratio * sup).item()
            else:
                total += -log_p[k].item()
        return total / n

    return 0.5 * (one_way(z1, z2) + one_way(z2, z1))


def test_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, -1, 3])
    loss, extras = anatomy_info_nce(z1, z2, labels, TAU, 0.3)
    assert loss.item() == pytest.approx(naive_anatomy(z1, z2, labels, TAU, 0.3), abs=1e-5)
    assert extras["anatomy_positive_share"].item() == pytest.approx(5 / 8)


def test_ratio_zero_or_no_shared_labels_is_instance_info_nce():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    plain = info_nce(z1, z2, TAU).item()
    assert anatomy_info_nce(z1, z2, torch.tensor([0, 0, 1, 1, 2, 2]), TAU, 0.0)[0].item() == pytest.approx(
        plain
    )
    assert anatomy_info_nce(z1, z2, torch.arange(6), TAU, 0.9)[0].item() == pytest.approx(plain)
    assert anatomy_info_nce(z1, z2, torch.full((6,), -1), TAU, 0.9)[0].item() == pytest.approx(plain)


def test_closed_form_on_aligned_orthogonal_pairs():
    # s = 1/tau on the own view, 0 elsewhere; anchors 0 and 1 share a label, 2 and 3 do not.
    n, tau, r = 4, 0.5, 0.25
    z = torch.eye(n)
    log_own = 1 / tau - math.log(math.exp(1 / tau) + n - 1)
    log_other = -math.log(math.exp(1 / tau) + n - 1)
    paired = -((1 - r) * log_own + r * log_other)
    expected = (2 * paired + 2 * -log_own) / n
    loss, _ = anatomy_info_nce(z, z.clone(), torch.tensor([5, 5, 6, 7]), tau, r)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(2)
    x_in = torch.randn(16, 12, generator=g)
    noise = 0.3 * torch.randn(16, 12, generator=g)
    labels = torch.arange(16) % 4
    f = torch.nn.Linear(12, 8)
    losses = sgd_losses(
        lambda _: anatomy_info_nce(f(x_in), f(x_in + noise), labels, TAU, 0.5), f.parameters(), 20
    )
    assert losses[-1] < 0.8 * losses[0]


def _anatomy(z1, z2, labels):
    return anatomy_info_nce(z1, z2, labels, TAU, 0.4)


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    # Positives across ranks: labels repeat between the halves.
    labels = torch.tensor([0, 1, 2, -1, 3, 0, 1, 4, 2, 3])
    assert_two_ranks_match_one(_anatomy, [z1, z2], labels)


def test_anatomy_labels_fine_coarse_and_background():
    planes = torch.tensor([schema.PLANES.index(p) for p in ("4ch", "rvot", "brain_tc", "background")] + [-1])
    fine = anatomy_labels(planes, AnatomyConfig(granularity="fine"))
    assert fine.tolist() == [planes[0].item(), planes[1].item(), planes[2].item(), -1, -1]
    coarse = anatomy_labels(planes, AnatomyConfig(granularity="coarse"))
    heart, brain = schema.ANATOMIES.index("heart"), schema.ANATOMIES.index("brain")
    assert coarse.tolist() == [heart, heart, brain, -1, -1]
    with_background = anatomy_labels(planes, AnatomyConfig(granularity="coarse", background_positive=True))
    assert with_background.tolist()[3] == schema.ANATOMIES.index("background")
    assert len(schema.PLANE_ANATOMY) == len(schema.PLANES)


def test_anatomy_labels_follow_a_custom_vocabulary_and_its_coarse_groups():
    # Lung classes; `regular` is the background and shares its coarse group with `effusion`.
    lung = schema.Vocabulary(
        ("covid", "pneumonia", "regular", "effusion"), ("infection", "pleural"), (0, 0, 1, 1), "regular"
    )
    labels = torch.tensor([0, 1, 2, 3, -1])
    coarse = anatomy_labels(labels, AnatomyConfig(granularity="coarse"), lung)
    assert coarse.tolist() == [0, 0, -1, 1, -1]  # the background alone leaves, not its group
    fine = anatomy_labels(labels, AnatomyConfig(granularity="fine"), lung)
    assert fine.tolist() == [0, 1, -1, 3, -1]
    kept = anatomy_labels(labels, AnatomyConfig(granularity="coarse", background_positive=True), lung)
    assert kept.tolist() == [0, 0, 1, 1, -1]
    # Without a coarse grouping (or a background), coarse matches on the classes themselves.
    plain = schema.Vocabulary(("a", "b", "c"))
    assert anatomy_labels(torch.tensor([2, 0]), AnatomyConfig(granularity="coarse"), plain).tolist() == [2, 0]


@pytest.mark.parametrize("mode", ["mask", "window"])
def test_same_scan_negatives_leave_the_denominators_but_positives_stay(mode):
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)
    # Clips 0 and 1 (same scan, 2 s apart) share a label: a positive pair that must stay.
    labels = torch.tensor([0, 0, 1, -1, 2, 1, 2, 3, 1, -1])
    exclude = same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S)
    loss, extras = anatomy_info_nce(z1, z2, labels, TAU, 0.4, exclude_BN=exclude)
    excluded = naive_excluded(SCANS_N, T0_N, mode)
    assert loss.item() == pytest.approx(naive_anatomy(z1, z2, labels, TAU, 0.4, excluded), abs=1e-5)
    plain, plain_extras = anatomy_info_nce(z1, z2, labels, TAU, 0.4)
    assert loss.item() < plain.item()  # fewer terms in every denominator
    assert extras["anatomy_positive_share"] == plain_extras["anatomy_positive_share"]
    # Every column but the own view excluded, labels all distinct: only positives left, loss 0.
    everything = ~torch.eye(10, dtype=torch.bool)
    alone, _ = anatomy_info_nce(z1, z2, torch.arange(10), TAU, 0.4, exclude_BN=everything)
    assert alone.item() == pytest.approx(0.0, abs=1e-6)


def _same_scan_anatomy(z1, z2, scan, t0, labels):
    # Both modes in one spawn (each costs seconds): their sum's value and gradients.
    def one(mode):
        exclude = same_scan_exclusions(scan, t0, mode, WINDOW_S)
        return anatomy_info_nce(z1, z2, labels, TAU, 0.4, exclude_BN=exclude)[0]

    return one("mask") + 0.5 * one("window")


def test_two_gloo_ranks_equal_one_process_without_same_scan_negatives():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    labels = torch.tensor([0, 0, 1, -1, 2, 1, 2, 3, 1, -1])
    assert_two_ranks_match_one(_same_scan_anatomy, [z1, z2, SCANS_N, T0_N], labels)
