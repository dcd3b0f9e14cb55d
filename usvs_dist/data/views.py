"""Views a recipe trains on, made from a batch on the training device: sub-clip orders and
rotations (isbi2020), two augmented views of a frame and anatomy labels (awcl2022); see
docs/methods.md.

Random draws use torch's global generator, which each rank seeds differently and saves in
its checkpoint. Shapes: B batch, C channels, T frames, H x W pixels, K sub-clips, P orders.
"""

from __future__ import annotations

import itertools
import random

import torch

from usvs_dist.config.schema import AnatomyConfig, AugmentConfig
from usvs_dist.data import schema
from usvs_dist.data.augment import augment_frames


def order_permutations(subclips: int, permutations: int = 0) -> torch.Tensor:
    """[P, K]: the orders to classify; all K! (P = 0) or the first P in lexicographic order."""
    perms = list(itertools.permutations(range(subclips)))
    return torch.tensor(perms[: permutations or len(perms)])


def order_views(video_BCTHW: torch.Tensor, perms_PK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each clip into K sub-clips of T // K frames, reorder them by a random order per clip.

    Returns (clips [B, K, C, T // K, H, W] in the drawn order, order index [B] into perms_PK).
    The T % K trailing frames are not used.
    """
    B, C, T, H, W = video_BCTHW.shape
    K = perms_PK.shape[1]
    if T < K:
        raise ValueError(f"order prediction cuts clips into {K} sub-clips but a clip has only {T} frames")
    length = T // K
    subclips_BKCtHW = video_BCTHW[:, :, : K * length].reshape(B, C, K, length, H, W).transpose(1, 2)
    target_B = torch.randint(len(perms_PK), (B,), device=video_BCTHW.device)
    order_BK = perms_PK.to(video_BCTHW.device)[target_B]
    return subclips_BKCtHW[torch.arange(B, device=video_BCTHW.device)[:, None], order_BK], target_B


def rotation_views(video_BCTHW: torch.Tensor, rotations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each clip by a random multiple of 360/rotations degrees; returns (clips, class [B])."""
    if video_BCTHW.shape[-1] != video_BCTHW.shape[-2]:
        raise ValueError(f"rotation prediction needs square frames, got {tuple(video_BCTHW.shape[-2:])}")
    target_B = torch.randint(rotations, (video_BCTHW.shape[0],), device=video_BCTHW.device)
    quarter_turns = 4 // rotations
    rotated = video_BCTHW.clone()
    for k in range(1, rotations):
        rows = target_B == k
        if rows.any():
            rotated[rows] = torch.rot90(video_BCTHW[rows], k * quarter_turns, dims=(-2, -1))
    return rotated, target_B


def two_views(image_BCHW: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations (crop inside the sector, jitter, flip) of every frame."""
    B, _, H, _ = image_BCHW.shape
    seeds = torch.randint(2**62, (2, B)).tolist()
    views = [
        torch.stack(
            [augment_frames(x, cfg, H, random.Random(seed)) for x, seed in zip(image_BCHW, row, strict=True)]
        )
        for row in seeds
    ]
    return views[0], views[1]


def anatomy_labels(
    plane_B: torch.Tensor, cfg: AnatomyConfig, vocabulary: schema.Vocabulary = schema.FETAL_PLANES
) -> torch.Tensor:
    """Class labels -> the labels anatomy positives are matched on; -1 where none applies.

    `coarse` matches on the vocabulary's coarse grouping (planes -> anatomies); a vocabulary
    without one is matched on its classes (BatchViews warns once). The background class, when
    the vocabulary names one, is no anatomy unless cfg.background_positive.
    """
    if cfg.granularity == "coarse" and vocabulary.coarse_of:
        table = torch.tensor(vocabulary.coarse_of, device=plane_B.device)
        out = torch.where(plane_B >= 0, table[plane_B.clamp(min=0)], -1)
    else:
        out = plane_B.clone()
    background = vocabulary.background_index
    if not cfg.background_positive and background is not None:
        # On the class itself: its coarse group may hold other classes, which stay anatomies.
        out = torch.where(plane_B == background, -1, out)
    return out
