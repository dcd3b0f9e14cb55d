"""Clip augmentation from config: a random resized crop inside the ultrasound sector, intensity
and contrast jitter, optional flip; one draw per clip, applied to all its frames alike.

The sector is the bounding box of pixels brighter than the background over the clip (the fan
of a curvilinear probe, without the letterbox and the dark margins), so crops never frame
empty background. Shapes: T frames, H x W pixels.
"""

from __future__ import annotations

import math
import random

import torch
from torchvision.transforms.v2 import functional as TF

from usvs_dist.config.schema import AugmentConfig

SECTOR_LEVEL = 0.06
"""Grey level (of 1) above which a pixel belongs to the image rather than the background."""
ASPECT_RANGE = (3 / 4, 4 / 3)


def sector_box(frames_THW: torch.Tensor, level: float = SECTOR_LEVEL) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels above `level` in any frame; the whole frame if none."""
    mask_HW = (frames_THW > level).any(dim=0)
    rows = torch.nonzero(mask_HW.any(dim=1)).flatten()
    cols = torch.nonzero(mask_HW.any(dim=0)).flatten()
    H, W = mask_HW.shape
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, H, W
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


def crop_in_box(
    box: tuple[int, int, int, int], min_scale: float, rng: random.Random
) -> tuple[int, int, int, int]:
    """A random (top, left, height, width) inside `box` covering [min_scale, 1] of its area."""
    top, left, bh, bw = box
    area = bh * bw
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(*(math.log(a) for a in ASPECT_RANGE)))
        h = round(math.sqrt(target / aspect))
        w = round(math.sqrt(target * aspect))
        if 0 < h <= bh and 0 < w <= bw:
            return top + rng.randint(0, bh - h), left + rng.randint(0, bw - w), h, w
    return box


def augment_frames(
    frames_THW: torch.Tensor, cfg: AugmentConfig, size: int, rng: random.Random
) -> torch.Tensor:
    """One random crop/jitter/flip for the whole clip, resized to size x size; values stay in [0, 1]."""
    top, left, h, w = crop_in_box(sector_box(frames_THW), cfg.crop_min_scale, rng)
    out = TF.resized_crop(frames_THW.unsqueeze(1), top, left, h, w, [size, size], antialias=True).squeeze(1)
    if cfg.flip and rng.random() < 0.5:
        out = out.flip(-1)
    if cfg.contrast:
        mean = out.mean()
        out = (out - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.brightness:
        out = out * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    return out.clamp_(0.0, 1.0)


def resize_frames(frames_THW: torch.Tensor, size: int) -> torch.Tensor:
    """Frames resized to size x size (no augmentation)."""
    if frames_THW.shape[-2:] == (size, size):
        return frames_THW
    return TF.resize(frames_THW.unsqueeze(1), [size, size], antialias=True).squeeze(1)
