"""VSE++ hardest-negative triplet loss: reference loops, closed form, SGD, gathered mining."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.loss_checks import SCANS_N, T0_N, WINDOW_S, assert_two_ranks_match_one, naive_excluded, sgd_losses
from usvs_dist.losses import hardest_triplet, same_scan_exclusions

MARGIN = 0.2


def naive_triplet(
    v: torch.Tensor, a: torch.Tensor, margin: float, excluded: list[list[bool]] | None = None
) -> float:
    """L_t of docs/methods.md as loops: both hinges of the hardest j != k, mean over k; j that are
    excluded for k (same-scan neighbours) are no negatives, and a k without any adds 0."""
    n = v.shape[0]
    s = [[F.cosine_similarity(v[k], a[j], dim=0).item() for j in range(n)] for k in range(n)]
    total = 0.0
    for k in range(n):
        negatives = [j for j in range(n) if j != k and not (excluded and excluded[k][j])]
        total += max((max(0.0, margin - s[k][k] + s[k][j]) for j in negatives), default=0.0)
        total += max((max(0.0, margin - s[k][k] + s[j][k]) for j in negatives), default=0.0)
    return total / n


def test_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert hardest_triplet(v, a, MARGIN).item() == pytest.approx(naive_triplet(v, a, MARGIN), abs=1e-5)


def test_closed_form_on_aligned_orthogonal_pairs():
    # s(v_k, a_k) = 1, s(v_k, a_j) = 0: each hinge is max(0, margin - 1), two per row.
    x = torch.eye(6) * 2.0
    assert hardest_triplet(x, x.clone(), 0.2).item() == 0.0
    assert hardest_triplet(x, x.clone(), 1.5).item() == pytest.approx(2 * 0.5, abs=1e-6)


def test_only_the_hardest_negative_counts():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = v.clone()
    # Row 0's hardest negative is row 2 (cos 0.707), not row 1 (cos 0).
    expected = naive_triplet(v, a, 0.5)
    assert hardest_triplet(v, a, 0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected > 0


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(2)
    x_in, y_in = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    fx, fy = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    losses = sgd_losses(
        lambda _: hardest_triplet(fx(x_in), fy(y_in), MARGIN), [*fx.parameters(), *fy.parameters()], 30
    )
    assert losses[-1] < 0.5 * losses[0]


def test_needs_two_samples_and_matching_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        hardest_triplet(torch.randn(1, 3), torch.randn(1, 3), MARGIN)
    with pytest.raises(ValueError, match="differ"):
        hardest_triplet(torch.randn(4, 3), torch.randn(4, 2), MARGIN)


def _triplet(v, a, labels):
    return hardest_triplet(v, a, MARGIN)


def test_two_gloo_ranks_mine_the_global_batch_like_one_process():
    g = torch.Generator().manual_seed(3)
    v, a = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    # The hardest negatives of rank 0's rows must sit on rank 1 for some rows, or a local-only
    # miner would pass too.
    s = F.normalize(v, dim=1) @ F.normalize(a, dim=1).T
    s.fill_diagonal_(-2)
    assert (s[:5].argmax(dim=1) >= 5).any()
    assert_two_ranks_match_one(_triplet, [v, a])


@pytest.mark.parametrize("mode", ["mask", "window"])
def test_same_scan_negatives_are_never_mined(mode):
    g = torch.Generator().manual_seed(4)
    v, a = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    excluded = naive_excluded(SCANS_N, T0_N, mode)
    got = hardest_triplet(v, a, MARGIN, exclude_BN=same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S))
    assert got.item() == pytest.approx(naive_triplet(v, a, MARGIN, excluded), abs=1e-5)
    # The same-scan neighbours are the hardest negatives here, so leaving them out changes the loss.
    v_near = v.clone()
    v_near[1] = a[0]  # clip 1 (2 s after clip 0, same scan) now looks exactly like clip 0's positive
    plain = hardest_triplet(v_near, a, MARGIN)
    masked = hardest_triplet(
        v_near, a, MARGIN, exclude_BN=same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S)
    )
    assert masked.item() < plain.item()
    assert masked.item() == pytest.approx(naive_triplet(v_near, a, MARGIN, excluded), abs=1e-5)


def test_a_row_without_negatives_adds_zero_and_a_finite_gradient():
    v = torch.randn(4, 3, requires_grad=True)
    a = torch.randn(4, 3)
    scans = torch.tensor([5, 5, 5, 5])
    loss = hardest_triplet(v, a, MARGIN, exclude_BN=same_scan_exclusions(scans, torch.zeros(4), "mask", 1.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(v.grad).all()


def _same_scan_triplet(v, a, scan, t0, labels):
    # Both modes in one spawn (each costs seconds): their sum's value and gradients.
    def one(mode):
        return hardest_triplet(v, a, MARGIN, exclude_BN=same_scan_exclusions(scan, t0, mode, WINDOW_S))

    return one("mask") + 0.5 * one("window")


def test_two_gloo_ranks_equal_one_process_without_same_scan_negatives():
    g = torch.Generator().manual_seed(5)
    v, a = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    assert_two_ranks_match_one(_same_scan_triplet, [v, a, SCANS_N, T0_N])
