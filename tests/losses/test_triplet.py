"""VSE++ hardest-negative triplet loss: reference loops, closed form, SGD, gathered mining."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.loss_checks import assert_two_ranks_match_one, sgd_losses
from usvs_dist.losses import hardest_triplet

MARGIN = 0.2


def naive_triplet(v: torch.Tensor, a: torch.Tensor, margin: float) -> float:
    """L_t of docs/methods.md as loops: both hinges of the hardest j != k, mean over k."""
    n = v.shape[0]
    s = [[F.cosine_similarity(v[k], a[j], dim=0).item() for j in range(n)] for k in range(n)]
    total = 0.0
    for k in range(n):
        total += max(max(0.0, margin - s[k][k] + s[k][j]) for j in range(n) if j != k)
        total += max(max(0.0, margin - s[k][k] + s[j][k]) for j in range(n) if j != k)
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
