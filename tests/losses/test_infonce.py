"""InfoNCE: naive reference, closed form, SGD, and 2 gloo ranks == 1 process on the global batch."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.loss_checks import SCANS_N, T0_N, WINDOW_S, assert_two_ranks_match_one, naive_excluded, sgd_losses
from usvs_dist.dist import collectives
from usvs_dist.losses import info_nce, same_scan_exclusions

TAU = 0.1


def naive_info_nce(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = True) -> torch.Tensor:
    """L_c of docs/methods.md written as loops over k and j."""

    def one_way(a, b):
        total = 0.0
        n = a.shape[0]
        for k in range(n):
            s = [F.cosine_similarity(a[k], b[j], dim=0) / tau for j in range(n)]
            denom = sum(math.exp(v.item()) for v in s)
            total += -math.log(math.exp(s[k].item()) / denom)
        return total / n

    forward = one_way(x, y)
    return torch.tensor(0.5 * (forward + one_way(y, x)) if symmetric else forward)


@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_naive_reference(symmetric):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = info_nce(x, y, TAU, symmetric=symmetric)
    assert torch.allclose(got, naive_info_nce(x, y, TAU, symmetric).to(got.dtype), atol=1e-5)


def test_symmetric_is_symmetric_in_its_arguments():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.allclose(info_nce(x, y, TAU), info_nce(y, x, TAU), atol=1e-6)
    assert not torch.allclose(info_nce(x, y, TAU, symmetric=False), info_nce(y, x, TAU, symmetric=False))


def test_closed_form_on_aligned_orthogonal_pairs():
    # s(x_k, y_k) = 1 and s(x_k, y_j) = 0: loss = -log(e^(1/tau) / (e^(1/tau) + N - 1)).
    n, tau = 8, 0.5
    x = torch.eye(n) * 3.0
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + n - 1))
    assert info_nce(x, x.clone(), tau).item() == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3), TAU)


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(2)
    x_in, y_in = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    fx, fy = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    losses = sgd_losses(lambda _: info_nce(fx(x_in), fy(y_in), TAU), [*fx.parameters(), *fy.parameters()], 20)
    assert losses[-1] < 0.5 * losses[0]


def _masked_nce(x, y, labels):
    # A symmetric relation as the admitted-negatives mask: same parity of the global index.
    n = collectives.world_size() * x.shape[0]
    rows = collectives.global_rows(x.shape[0], x.device)
    admit = (rows[:, None] % 2) == (torch.arange(n)[None, :] % 2)
    return info_nce(x, y, TAU, admit_BN=admit)


def _plain_nce(x, y, labels):
    return info_nce(x, y, TAU)


@pytest.mark.parametrize("loss_fn", [_plain_nce, _masked_nce], ids=["plain", "masked"])
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(loss_fn):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    assert_two_ranks_match_one(loss_fn, [x, y])


def test_masked_negatives_match_the_reference_on_the_admitted_columns():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    admit = torch.rand(6, 6, generator=g) > 0.5
    admit = admit & admit.T
    got = info_nce(x, y, TAU, symmetric=False, admit_BN=admit)
    # Reference: each row's softmax over its positive and its admitted negatives only.
    xs, ys = F.normalize(x, dim=1), F.normalize(y, dim=1)
    total = 0.0
    for k in range(6):
        cols = [j for j in range(6) if j == k or admit[k, j]]
        s = torch.stack([xs[k] @ ys[j] / TAU for j in cols])
        total += -(s[cols.index(k)] - torch.logsumexp(s, 0))
    assert got.item() == pytest.approx(total.item() / 6, abs=1e-5)


def naive_info_nce_excluding(x, y, tau: float, excluded: list[list[bool]], symmetric: bool = True) -> float:
    """L_c as loops over anchors k, each softmax over its positive and the j not excluded for k.

    The reverse direction's anchor y_k has the same excluded j: whether clips k and j are
    same-scan neighbours does not depend on the modality.
    """
    n = x.shape[0]

    def one_way(a, b):
        total = 0.0
        for k in range(n):
            cols = [j for j in range(n) if not excluded[k][j]]
            s = torch.stack([F.cosine_similarity(a[k], b[j], dim=0) / tau for j in cols])
            total += -(s[cols.index(k)] - torch.logsumexp(s, 0)).item()
        return total / n

    forward = one_way(x, y)
    return 0.5 * (forward + one_way(y, x)) if symmetric else forward


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("mode", ["mask", "window"])
def test_same_scan_negatives_match_the_looped_reference(mode, symmetric):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    exclude = same_scan_exclusions(SCANS_N, T0_N, mode, WINDOW_S)
    got = info_nce(x, y, TAU, symmetric=symmetric, exclude_BN=exclude)
    expected = naive_info_nce_excluding(x, y, TAU, naive_excluded(SCANS_N, T0_N, mode), symmetric)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    assert got.item() != pytest.approx(info_nce(x, y, TAU, symmetric=symmetric).item(), abs=1e-3)


def test_no_exclusions_is_exactly_the_plain_loss_and_the_positive_always_stays():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    none_excluded = torch.zeros(6, 6, dtype=torch.bool)
    assert torch.equal(info_nce(x, y, TAU, exclude_BN=none_excluded), info_nce(x, y, TAU))
    # Every column excluded, the positive's too: it stays, so each softmax is certain.
    everything = torch.ones(6, 6, dtype=torch.bool)
    assert info_nce(x, y, TAU, exclude_BN=everything).item() == pytest.approx(0.0, abs=1e-6)
    # Both masks at once: a negative must be admitted and not excluded.
    admit = torch.ones(6, 6, dtype=torch.bool)
    both = info_nce(x, y, TAU, symmetric=False, admit_BN=admit, exclude_BN=~torch.eye(6, dtype=torch.bool))
    assert both.item() == pytest.approx(0.0, abs=1e-6)


def _same_scan_nce(x, y, scan, t0, labels, mode):
    return info_nce(x, y, TAU, exclude_BN=same_scan_exclusions(scan, t0, mode, WINDOW_S))


@pytest.mark.parametrize("mode", ["mask", "window"])
def test_two_gloo_ranks_equal_one_process_without_same_scan_negatives(mode):
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    assert_two_ranks_match_one(functools.partial(_same_scan_nce, mode=mode), [x, y, SCANS_N, T0_N])
