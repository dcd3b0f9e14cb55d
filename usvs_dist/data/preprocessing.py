"""What an encoder's input is made of, as a plain dict (`preprocessing.json` of an export).

It states what `decode.ClipDecoder` and `decode.BatchFinisher` do to a clip when not augmenting
(evaluation, and what a user of the exported encoders must reproduce), with the run's `data.*`
settings filled in: no path, scan or run identifier is written.

- video [B, C, T, S, S]: T frames at the centres of T equal segments of the clip's stored
  frames; the grey image is the decoded frame's first channel; the whole frame (no crop) resized
  to S x S (antialiased bilinear); uint8 / 255 -> [0, 1]; no mean/std normalisation; C = 3
  repeats grey into identical R, G, B.
- image [B, C, S, S]: the clip's middle stored frame, prepared as one video frame.
- audio [B, 1, M, F]: mono narration at data.sample_rate, the clip's first clip_seconds;
  torchaudio power spectrogram (Hann window of n_fft, hop, centred, reflect padding) -> HTK mel
  filters (unnormalised) -> natural log of (power + 1e-6).
"""

from __future__ import annotations

import logging
from typing import Any

from usvs_dist.config.schema import RootConfig
from usvs_dist.data.shards import load_index

log = logging.getLogger(__name__)

FORMAT = "usvs_dist.preprocessing/1"
"""Version tag of the dict's layout."""
LOG_EPSILON = 1e-6
"""Added to the mel power before the log (decode.BatchFinisher)."""


def clip_timing(cfg: RootConfig) -> dict[str, Any]:
    """{"clip_seconds", "stored_fps", "source"} of the clips the run trained on.

    The shards' index.json records them; the phantom's are its config's. When the index cannot be
    read here (a remote store, another machine), both are None and `source` says so.
    """
    if not cfg.data.shards:
        return {
            "clip_seconds": cfg.phantom.clip_seconds,
            "stored_fps": cfg.phantom.fps,
            "source": "phantom config",
        }
    try:
        index = load_index(cfg.data.shards)
    except Exception as exc:  # unreachable store or missing file: the export still has the rest
        log.warning(
            "clip length and frame rate left out: the shard index is not readable here (%s)",
            type(exc).__name__,
        )
        return {"clip_seconds": None, "stored_fps": None, "source": "unknown (shard index not readable)"}
    fps = index.get("fps")
    return {
        "clip_seconds": float(index["clip_seconds"]),
        "stored_fps": float(fps) if fps is not None else None,
        "source": "shard index",
    }


def _video_frames(cfg: RootConfig) -> dict[str, Any]:
    data = cfg.data
    return {
        "frame_size": data.frame_size,
        "channels": data.channels,
        "colour": "grey" if data.channels == 1 else "grey repeated into 3 identical RGB channels",
        "grey_from": "the first channel of the decoded RGB frame",
        "resize": f"whole frame (no crop) to {data.frame_size}x{data.frame_size}, bilinear, antialiased",
        "scaling": "uint8 / 255 -> float32 in [0, 1]",
        "normalisation": {"mean": None, "std": None, "note": "none: inputs stay in [0, 1]"},
    }


def describe(cfg: RootConfig, modality: str, timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preprocessing of `modality`'s encoder input under `cfg` (timing: `clip_timing(cfg)`)."""
    data = cfg.data
    timing = clip_timing(cfg) if timing is None else timing
    common = {
        "format": FORMAT,
        "modality": modality,
        "encoder": getattr(cfg.model, modality),
        "dtype": "float32",
    }
    clip = {
        "clip_seconds": timing["clip_seconds"],
        "stored_fps": timing["stored_fps"],
        "timing_from": timing["source"],
    }
    if modality == "video":
        return {
            **common,
            "input": "video_BCTHW",
            "shape": [None, data.channels, data.num_frames, data.frame_size, data.frame_size],
            "frames": data.num_frames,
            **clip,
            "frame_sampling": "the centre frame of each of `frames` equal parts of the clip's stored frames",
            **_video_frames(cfg),
        }
    if modality == "image":
        return {
            **common,
            "input": "image_BCHW",
            "shape": [None, data.channels, data.frame_size, data.frame_size],
            **clip,
            "frame_sampling": "the clip's middle stored frame",
            **_video_frames(cfg),
        }
    if modality == "audio":
        seconds = timing["clip_seconds"]
        return {
            **common,
            "input": "audio_B1MF",
            "shape": [None, 1, data.n_mels, None],
            **clip,
            "samples": round(seconds * data.sample_rate) if seconds is not None else None,
            "mel": {
                "sample_rate": data.sample_rate,
                "n_fft": data.n_fft,
                "win_length": data.n_fft,
                "window": "hann",
                "hop_length": data.hop_length,
                "center": True,
                "pad_mode": "reflect",
                "power": 2.0,
                "n_mels": data.n_mels,
                "f_min": data.f_min,
                "f_max": data.f_max,
                "mel_scale": "htk",
                "mel_norm": None,
                "log": f"natural log of (mel power + {LOG_EPSILON:g})",
            },
            "channels": 1,
            "mono": True,
            "normalisation": {"mean": None, "std": None, "note": "none beyond the log"},
        }
    raise ValueError(f"modality {modality!r}: expected video, image or audio")
