"""isbi2020's one pretext input: sub-clips shuffled, then the whole clip rotated through a centred
disc, so the sector's outline says nothing about the rotation (a classifier shown only the
visible region's outline is at chance; shown the whole-frame rotation it is not)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from usvs_dist.config import load_config
from usvs_dist.config.schema import AugmentConfig, PretextConfig
from usvs_dist.data.augment import apply_crop, crop_in_box, sector_box
from usvs_dist.data.views import centred_disc, order_permutations, pretext_views

SIZE = 32
"""Side of the training frames in the outline test."""
FAN = 80
"""Side of the frame the fan is drawn on before the training crop."""


def test_one_clip_is_both_reordered_and_rotated_and_seen_through_the_disc():
    B, K, T, H = 8, 3, 7, 9
    # Frame t is filled with t and asymmetric content, so both the order and the turn show.
    content = torch.rand(B, 1, 1, H, H)
    video = content + torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1) * 10
    perms = order_permutations(K)
    torch.manual_seed(0)
    clips, order, rotation = pretext_views(video, perms, 4, radius=0.8)
    assert clips.shape == (B, K, 1, T // K, H, H) and order.shape == rotation.shape == (B,)
    disc = centred_disc(H, 0.8)
    assert set(rotation.tolist()) == {0, 1, 2, 3}
    for b in range(B):
        for slot, sub in enumerate(perms[order[b]].tolist()):
            source = video[b, :, 2 * sub : 2 * sub + 2]
            expected = torch.rot90(source, int(rotation[b]), dims=(-2, -1)) * disc
            assert torch.equal(clips[b, slot], expected)
    # Every clip, turned or not, is 0 outside the disc and its own content inside.
    assert not clips[..., ~disc].any() and clips[..., disc].all()

    # The full region turns the whole frame, nothing blanked.
    torch.manual_seed(0)
    full, order_full, rotation_full = pretext_views(video, perms, 4)
    assert torch.equal(order_full, order) and torch.equal(rotation_full, rotation)
    b = int(torch.nonzero(rotation == 1)[0])
    first = int(perms[order[b], 0])
    source = video[b, :, 2 * first : 2 * first + 2]
    assert torch.equal(full[b, 0], torch.rot90(source, 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        pretext_views(torch.rand(2, 1, 6, 4, 5), perms, 4, radius=0.5)


@pytest.mark.parametrize("size", [8, 9, 32, 33])
def test_the_disc_is_its_own_image_under_quarter_turns_and_flips(size):
    for radius in (0.3, 0.4, 0.77, 1.0):
        disc = centred_disc(size, radius)
        assert torch.equal(torch.rot90(disc), disc) and torch.equal(disc.flip(0), disc)
        assert torch.equal(disc.flip(1), disc)
        if size >= 32:
            # Radius as a share of half the side: pi r^2 / 4 of the frame.
            assert disc.float().mean().item() == pytest.approx(math.pi * radius**2 / 4, abs=0.02)


def _fan_clips(n: int, rng: random.Random, gen: torch.Generator) -> torch.Tensor:
    """[n, 1, 3, SIZE, SIZE]: textured clips inside a curvilinear probe's fan (apex above the top
    edge, 72 degrees wide, as the phantom draws it), each cut by the loader's random crop inside
    the sector box (data.augment at its default scale) and resized to SIZE, as training sees them."""
    ys, xs = torch.meshgrid(
        torch.arange(FAN, dtype=torch.float32), torch.arange(FAN, dtype=torch.float32), indexing="ij"
    )
    x, y = (xs - FAN / 2) / (FAN / 2), (ys + 0.08 * FAN) / (1.08 * FAN)
    r, theta = torch.hypot(x, y), torch.atan2(x, y)
    fan = (theta.abs() < math.radians(36)) & (r < 1.0) & (r > 0.08)
    box = sector_box(fan[None].float())
    clips = []
    for _ in range(n):
        # Bright enough everywhere in the fan that the support is the fan, not the texture.
        texture = (0.3 + 0.7 * torch.rand(3, FAN, FAN, generator=gen)) * fan
        crop = (*crop_in_box(box, AugmentConfig().crop_min_scale, rng), 0)
        clips.append(apply_crop(texture, crop, SIZE))
    return torch.stack(clips)[:, None]


def _outline_accuracy(radius: float | None, n_train: int = 400, n_test: int = 400) -> float:
    """Held-out accuracy of a logistic regression predicting the rotation class from the visible
    region alone: each pretext clip with its content blanked to 1 inside the support, 0 outside."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    video = _fan_clips(n_train + n_test, random.Random(2), gen)
    clips, _, rotation = pretext_views(video, order_permutations(3), 4, radius)
    support = (clips > 0.05).any(dim=(1, 2, 3)).flatten(1).float()  # [B, SIZE * SIZE]
    x_train, y_train = support[:n_train], rotation[:n_train]
    x_test, y_test = support[n_train:], rotation[n_train:]
    model = torch.nn.Linear(SIZE * SIZE, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def test_the_sector_outline_does_not_tell_the_rotation_through_the_disc():
    radius = PretextConfig().circle_radius
    blind = _outline_accuracy(radius)
    # 4 classes, 400 held-out clips: chance is 0.25 with a standard error of about 0.02.
    assert blind < 0.25 + 0.1, f"outline classifier through the disc: {blind:.3f}"
    # The control: the whole-frame rotation gives itself away by the fan's outline alone.
    assert _outline_accuracy(None) > 0.9


def test_the_region_and_radius_are_checked_when_the_config_is_merged():
    with pytest.raises(
        ValueError, match="objective.pretext.transform_region='square' is invalid: expected one of"
    ):
        load_config(None, ["objective.pretext.transform_region=square"])
    with pytest.raises(
        ValueError, match=r"objective.pretext.circle_radius=0.0 is invalid: expected in \(0, 1\]"
    ):
        load_config(None, ["objective.pretext.circle_radius=0.0"])
    assert (
        load_config(None, ["objective.pretext.transform_region=full"]).objective.pretext.transform_region
        == "full"
    )
