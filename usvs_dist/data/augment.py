"""Clip augmentation from config: a random resized crop inside the ultrasound sector, intensity
and contrast jitter, optional flip; one draw per clip, applied to all its frames alike.

The sector is the bounding box of pixels brighter than the background over the clip (the fan
of a curvilinear probe, without the letterbox and the dark margins), so crops never frame
empty background. Shapes: B clips, T frames, H x W pixels.

The loader splits the work: the crop, resize and flip run per clip on uint8 frames (a quarter of
the bytes of floats), and the intensity jitter, drawn per clip, is applied to the whole batch at
once while it becomes float (`finish_batch`).
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
    """(top, left, height, width) of the pixels above `level` (of full scale) in any frame; the
    whole frame if none. uint8 frames have full scale 255, float frames 1."""
    threshold = level * 255 if frames_THW.dtype == torch.uint8 else level
    mask_HW = frames_THW.amax(dim=0) > threshold
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


def crop_and_flip(
    frames_THW: torch.Tensor, cfg: AugmentConfig, size: int, rng: random.Random
) -> torch.Tensor:
    """One random crop inside the sector and optional flip for the whole clip, resized to size x size.

    Keeps the dtype: uint8 frames stay uint8 (torch's antialiased uint8 resize).
    """
    top, left, h, w = crop_in_box(sector_box(frames_THW), cfg.crop_min_scale, rng)
    out = TF.resized_crop(frames_THW.unsqueeze(1), top, left, h, w, [size, size], antialias=True).squeeze(1)
    if cfg.flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out


def draw_intensity(cfg: AugmentConfig, rng: random.Random | None) -> tuple[float, float]:
    """(contrast, brightness) factors of one clip; (1, 1) without an rng (not augmenting)."""
    if rng is None:
        return 1.0, 1.0
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
    brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness else 1.0
    return contrast, brightness


def jitter_batch(frames_BTHW: torch.Tensor, intensity_B2: torch.Tensor) -> torch.Tensor:
    """Float clips in [0, 1] -> ((x - mean) * contrast + mean) * brightness per clip, clamped; in place."""
    B = frames_BTHW.shape[0]
    contrast, brightness = (intensity_B2[:, k].float().view(B, 1, 1, 1) for k in (0, 1))
    mean = frames_BTHW.mean(dim=(1, 2, 3), keepdim=True)
    frames_BTHW.mul_(contrast * brightness).add_(mean * (1 - contrast) * brightness)
    return frames_BTHW.clamp_(0.0, 1.0)


def finish_batch(frames_BTHW: torch.Tensor, intensity_B2: torch.Tensor) -> torch.Tensor:
    """uint8 clips -> floats in [0, 1] with each clip's contrast and brightness (jitter_batch).

    In-place passes over the floats; torch's mixed uint8/float kernels were ten times slower.
    """
    return jitter_batch(frames_BTHW.float().mul_(1 / 255), intensity_B2)


def augment_frames(
    frames_THW: torch.Tensor, cfg: AugmentConfig, size: int, rng: random.Random
) -> torch.Tensor:
    """One random crop/flip/jitter for a whole clip of floats, resized to size x size, kept in [0, 1]."""
    # A copy: the resize returns its input unchanged when the crop is already size x size.
    out = crop_and_flip(frames_THW, cfg, size, rng).clone()
    return jitter_batch(out.unsqueeze(0), torch.tensor([draw_intensity(cfg, rng)]))[0]


def resize_frames(frames_THW: torch.Tensor, size: int) -> torch.Tensor:
    """Frames resized to size x size (no augmentation)."""
    if frames_THW.shape[-2:] == (size, size):
        return frames_THW
    return TF.resize(frames_THW.unsqueeze(1), [size, size], antialias=True).squeeze(1)
