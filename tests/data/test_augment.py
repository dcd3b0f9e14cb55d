"""The split augmentation: crop/flip drawn per clip where it is decoded, applied with the intensity
jitter to the whole batch where it is consumed; the same result as augmenting one float clip."""

from __future__ import annotations

import random

import torch

from usvs_dist.config.schema import AugmentConfig
from usvs_dist.data.augment import (
    augment_frames,
    draw_crop,
    draw_intensity,
    finish_batch,
    sector_box,
    whole_frame,
)


def test_finish_batch_applies_each_clips_contrast_and_brightness():
    frames = torch.randint(0, 256, (3, 5, 8, 8), dtype=torch.uint8)
    intensity = torch.tensor([[1.0, 1.0], [1.3, 0.8], [0.7, 1.2]])
    crops = [whole_frame(f) for f in frames]
    video, image = finish_batch(frames, crops, intensity, size=8, clip_frames=4)
    assert video.shape == (3, 4, 8, 8) and image.shape == (3, 1, 8, 8) and video.dtype == torch.float32
    assert video.is_contiguous() and image.is_contiguous()
    got = torch.cat([video, image], dim=1)
    for k, (c, b) in enumerate(intensity.tolist()):
        x = frames[k].double() / 255
        expected = (((x - x.mean()) * c + x.mean()) * b).clamp(0, 1)  # one mean over clip and image
        assert torch.allclose(got[k].double(), expected, atol=1e-6), k
    assert torch.allclose(got[0], frames[0].float() / 255, atol=1e-6)  # (1, 1): plain conversion


def test_finish_batch_crops_flips_and_resizes_each_clip_as_drawn():
    frames = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    crops = [(2, 4, 8, 8, 0), (0, 0, 16, 16, 1)]
    video, image = finish_batch(frames, crops, torch.ones(2, 2), size=8, clip_frames=2)
    assert torch.allclose(video[0] * 255, frames[0, :2, 2:10, 4:12].float(), atol=1e-3)  # 8x8 crop, no resize
    assert torch.allclose(image[0, 0] * 255, frames[0, 2, 2:10, 4:12].float(), atol=1e-3)
    halved = torch.nn.functional.interpolate(frames[1:].float(), size=(8, 8), mode="bilinear", antialias=True)
    assert (video[1] * 255 - halved[0, :2].flip(-1)).abs().max() <= 1.0  # uint8 rounding of the resize


def test_drawn_crop_then_batch_finish_matches_the_float_path():
    cfg = AugmentConfig(crop_min_scale=0.5, brightness=0.2, contrast=0.3, flip=True)
    clip = torch.zeros(4, 32, 32, dtype=torch.uint8)
    clip[:, 6:28, 4:30] = torch.randint(40, 220, (4, 22, 26), dtype=torch.uint8)
    assert sector_box(clip) == sector_box(clip.float() / 255) == (6, 4, 22, 26)
    for seed in range(20):
        rng = random.Random(seed)
        crop = draw_crop(clip, cfg, rng)
        top, left, h, w, _ = crop
        assert 6 <= top and top + h <= 28 and 4 <= left and left + w <= 30  # inside the sector
        video, image = finish_batch(clip[None], [crop], torch.tensor([draw_intensity(cfg, rng)]), 24, 3)
        split = torch.cat([video, image], dim=1)[0]
        whole = augment_frames(clip.float() / 255, cfg, 24, random.Random(seed))  # same draws, in floats
        assert split.shape == whole.shape == (4, 24, 24)
        assert (split - whole).abs().max() < 3 / 255  # only the uint8 rounding of the resize differs
    assert draw_intensity(cfg, None) == (1.0, 1.0)
