"""Clip augmentation from config: a random resized crop inside the ultrasound sector, intensity
and contrast jitter, optional flip; one draw per clip, applied to all its frames alike.

The sector is the bounding box of pixels brighter than the background over the clip (the fan
of a curvilinear probe, without the letterbox and the dark margins), so crops never frame
empty background. Shapes: B clips, T frames, H x W pixels.

The loader splits the work: each clip's crop and flip are drawn where it is decoded (they need
only its sector box), and applied with the intensity jitter to the whole batch by `finish_batch`
in the loader's last stage (where that runs, and why: `usvs_dist.data.pipeline`, stage 5).
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


Crop = tuple[int, int, int, int, int]
"""One clip's (top, left, height, width, flip) in the pixels of its stored frames."""


def draw_crop(frames_THW: torch.Tensor, cfg: AugmentConfig, rng: random.Random) -> Crop:
    """A random crop inside the clip's sector and an optional flip, drawn once for all its frames."""
    top, left, h, w = crop_in_box(sector_box(frames_THW), cfg.crop_min_scale, rng)
    return top, left, h, w, int(cfg.flip and rng.random() < 0.5)


def whole_frame(frames_THW: torch.Tensor) -> Crop:
    """The crop that keeps the whole frame, unflipped (no augmentation)."""
    return 0, 0, frames_THW.shape[-2], frames_THW.shape[-1], 0


def apply_crop(frames_THW: torch.Tensor, crop: Crop, size: int) -> torch.Tensor:
    """The crop of every frame resized to size x size (antialiased; uint8 stays uint8), then flipped.

    A view of the input when the crop is the whole frame at size x size and unflipped.
    """
    top, left, h, w, flip = crop
    out = TF.resized_crop(frames_THW.unsqueeze(1), top, left, h, w, [size, size], antialias=True).squeeze(1)
    return out.flip(-1) if flip else out


def draw_intensity(cfg: AugmentConfig, rng: random.Random | None) -> tuple[float, float]:
    """(contrast, brightness) factors of one clip; (1, 1) without an rng (not augmenting)."""
    if rng is None:
        return 1.0, 1.0
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
    brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness else 1.0
    return contrast, brightness


def jitter_gain_offset(intensity_B2: torch.Tensor, mean_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip, x -> x * gain + offset equals ((x - mean) * contrast + mean) * brightness."""
    contrast, brightness = intensity_B2[:, 0].float(), intensity_B2[:, 1].float()
    return contrast * brightness, mean_B * (1 - contrast) * brightness


def jitter_batch(frames_BTHW: torch.Tensor, intensity_B2: torch.Tensor) -> torch.Tensor:
    """Float clips in [0, 1] -> each clip's contrast and brightness (jitter_gain_offset); in place."""
    B = frames_BTHW.shape[0]
    gain, offset = jitter_gain_offset(intensity_B2, frames_BTHW.reshape(B, -1).mean(dim=1))
    frames_BTHW.mul_(gain.view(B, 1, 1, 1)).add_(offset.view(B, 1, 1, 1))
    return frames_BTHW.clamp_(0.0, 1.0)


def finish_batch(
    frames_BNHW: torch.Tensor, crops: list[Crop], intensity_B2: torch.Tensor, size: int, clip_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames at stored size -> (the first `clip_frames` of each clip, the rest), each clip
    cropped and flipped as drawn, resized to size x size, as floats in [0, 1] with its jitter.

    The jitter's mean is over all of a clip's frames, so the clip and its image frame get the same
    intensity map. The two outputs are converted separately, so neither is a copy of a slice.
    """
    B = frames_BNHW.shape[0]
    sized = torch.stack([apply_crop(f, c, size) for f, c in zip(frames_BNHW, crops, strict=True)])
    mean = sized.reshape(B, -1).sum(dim=1, dtype=torch.float64).float() / (255 * sized[0].numel())
    gain, offset = jitter_gain_offset(intensity_B2, mean)
    gain, offset = (gain / 255).view(B, 1, 1, 1), offset.view(B, 1, 1, 1)
    # In-place passes over the floats; torch's mixed uint8/float kernels were ten times slower.
    return tuple(
        part.float().mul_(gain).add_(offset).clamp_(0.0, 1.0)
        for part in (sized[:, :clip_frames], sized[:, clip_frames:])
    )


def augment_frames(
    frames_THW: torch.Tensor, cfg: AugmentConfig, size: int, rng: random.Random
) -> torch.Tensor:
    """One random crop/flip/jitter for a whole clip of floats, resized to size x size, kept in [0, 1]."""
    # A copy: the resize returns its input unchanged when the crop is already size x size.
    out = apply_crop(frames_THW, draw_crop(frames_THW, cfg, rng), size).clone()
    return jitter_batch(out.unsqueeze(0), torch.tensor([draw_intensity(cfg, rng)]))[0]
