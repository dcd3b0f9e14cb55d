"""The split augmentation: per-clip crop/flip on uint8, then the batch's intensity jitter at once."""

from __future__ import annotations

import random

import torch

from usvs_dist.config.schema import AugmentConfig
from usvs_dist.data.augment import augment_frames, crop_and_flip, draw_intensity, finish_batch, sector_box


def test_finish_batch_applies_each_clips_contrast_and_brightness():
    frames = torch.randint(0, 256, (3, 5, 8, 8), dtype=torch.uint8)
    intensity = torch.tensor([[1.0, 1.0], [1.3, 0.8], [0.7, 1.2]])
    got = finish_batch(frames, intensity)
    assert got.shape == frames.shape and got.dtype == torch.float32
    for k, (c, b) in enumerate(intensity.tolist()):
        x = frames[k].double() / 255
        expected = (((x - x.mean()) * c + x.mean()) * b).clamp(0, 1)
        assert torch.allclose(got[k].double(), expected, atol=1e-6), k
    assert torch.allclose(got[0], frames[0].float() / 255, atol=1e-6)  # (1, 1): plain conversion


def test_uint8_crop_then_batch_jitter_matches_the_float_path():
    cfg = AugmentConfig(crop_min_scale=0.5, brightness=0.2, contrast=0.3, flip=True)
    clip = torch.zeros(4, 32, 32, dtype=torch.uint8)
    clip[:, 6:28, 4:30] = torch.randint(40, 220, (4, 22, 26), dtype=torch.uint8)
    assert sector_box(clip) == sector_box(clip.float() / 255) == (6, 4, 22, 26)
    rng = random.Random(7)
    u8 = crop_and_flip(clip, cfg, 24, rng)
    split = finish_batch(u8[None], torch.tensor([draw_intensity(cfg, rng)]))[0]
    whole = augment_frames(clip.float() / 255, cfg, 24, random.Random(7))  # the same draws, in floats
    assert u8.dtype == torch.uint8 and split.shape == whole.shape == (4, 24, 24)
    assert (split - whole).abs().max() < 3 / 255  # only the uint8 rounding of the resize differs
    assert draw_intensity(cfg, None) == (1.0, 1.0)
