"""isbi2020's pretext tasks: the views (sub-clip orders, rotations) and their classification loss."""

from __future__ import annotations

import math

import pytest
import torch

from tests.loss_checks import assert_two_ranks_match_one, sgd_losses
from usvs_dist.data.views import order_permutations, order_views, rotation_views
from usvs_dist.losses import pretext_classification


def test_permutations_are_all_orders_or_the_first_p():
    assert order_permutations(3).tolist() == [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ]
    assert len(order_permutations(4)) == 24 and len(order_permutations(4, 10)) == 10


def test_order_views_reorder_subclips_by_the_drawn_permutation():
    B, C, T, H, W = 4, 1, 7, 3, 3
    # Each frame is filled with its frame index, so the order is visible in the output.
    video = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(B, C, T, H, W).contiguous()
    perms = order_permutations(3)
    torch.manual_seed(0)
    clips, target = order_views(video, perms)
    assert clips.shape == (B, 3, C, 2, H, W) and target.shape == (B,)
    for b in range(B):
        for slot, sub in enumerate(perms[target[b]].tolist()):
            # sub-clip `sub` holds frames 2*sub and 2*sub + 1; frame 6 (T % K) is unused
            assert clips[b, slot, 0, :, 0, 0].tolist() == [2 * sub, 2 * sub + 1]
    with pytest.raises(ValueError, match="only 2 frames"):
        order_views(video[:, :, :2], perms)


def test_rotation_views_rotate_by_the_drawn_quarter_turns():
    video = torch.rand(8, 1, 2, 5, 5)
    torch.manual_seed(1)
    rotated, target = rotation_views(video, 4)
    for b in range(8):
        assert torch.equal(rotated[b], torch.rot90(video[b], int(target[b]), dims=(-2, -1)))
    rotated, target = rotation_views(video, 2)
    for b in range(8):
        assert torch.equal(rotated[b], torch.rot90(video[b], 2 * int(target[b]), dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rotation_views(torch.rand(2, 1, 2, 4, 5), 4)


def test_classification_matches_reference_and_closed_forms():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, acc = pretext_classification(logits, target)
    reference = sum(-(logits[k, target[k]] - torch.logsumexp(logits[k], 0)) for k in range(6)) / 6
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    assert acc.item() == pytest.approx((logits.argmax(1) == target).float().mean().item())
    # Uniform logits: log P; a correct margin of 50: ~0 and accuracy 1.
    assert pretext_classification(torch.zeros(5, 6), torch.arange(5))[0].item() == pytest.approx(math.log(6))
    confident = torch.nn.functional.one_hot(torch.arange(5), 6).float() * 50
    loss, acc = pretext_classification(confident, torch.arange(5))
    assert loss.item() < 1e-6 and acc.item() == 1.0
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 6\)"):
        pretext_classification(torch.zeros(2, 6), torch.tensor([0, 6]))


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(3)
    x, target = torch.randn(32, 10, generator=g), torch.randint(0, 4, (32,), generator=g)
    head = torch.nn.Linear(10, 4)
    losses = sgd_losses(lambda _: pretext_classification(head(x), target), head.parameters(), 30)
    assert losses[-1] < 0.7 * losses[0]


def _classify(x, target, labels):
    return pretext_classification(x[:, :4], target)


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    g = torch.Generator().manual_seed(4)
    assert_two_ranks_match_one(
        _classify, [torch.randn(10, 6, generator=g), torch.randint(0, 4, (10,), generator=g)]
    )
