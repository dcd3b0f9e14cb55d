"""Evaluation clips: every clip of some splits, decoded without augmentation (centre frames), in
shard order, held in memory (downstream sets are small; `eval.max_clips` caps them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import default_collate

from usvs_dist.config import redact
from usvs_dist.config.schema import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.decode import BatchFinisher, ClipDecoder, TarErrors, has_narration
from usvs_dist.data.epoch import shard_samples
from usvs_dist.data.shards import load_index, split_shards

log = logging.getLogger(__name__)


@dataclass
class ClipSet:
    """Decoded clips: tensors stacked over N clips, and each clip's (hashed) scan id."""

    video: torch.Tensor
    """[N, C, T, H, W] in [0, 1]."""
    image: torch.Tensor
    """[N, C, H, W]: the centre frame."""
    audio: torch.Tensor | None
    """[N, 1, M, F] log-mel; None when loaded without narration (tasks that read none)."""
    labels: torch.Tensor
    """[N, T] plane per sampled frame (-1: none)."""
    image_label: torch.Tensor
    """[N] plane of the centre frame: the clip's label for plane detection."""
    gaze: torch.Tensor
    """[N, T, 2] gaze point per sampled frame in [0, 1] (NaN: none)."""
    image_gaze: torch.Tensor
    """[N, 2] gaze point of the centre frame (NaN: none)."""
    scan: list[str]
    skipped: int
    """Clips that could not be decoded (logged)."""
    vocabulary: schema.Vocabulary = schema.FETAL_PLANES
    """The shards' label classes (index.json)."""

    def __len__(self) -> int:
        return len(self.scan)

    def subset(self, rows: torch.Tensor | list[int]) -> ClipSet:
        """The clips at `rows`."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ClipSet(
            self.video[rows],
            self.image[rows],
            None if self.audio is None else self.audio[rows],
            self.labels[rows],
            self.image_label[rows],
            self.gaze[rows],
            self.image_gaze[rows],
            [self.scan[i] for i in rows.tolist()],
            self.skipped,
            self.vocabulary,
        )


def load_clips(
    cfg: DataConfig, location: str | Path, splits: list[str], max_clips: int, audio: bool = True
) -> ClipSet:
    """The first `max_clips` decodable clips of `splits` (shard order), without augmentation.

    With `audio`, only clips with narration, and their log-mel; without, every clip and no audio.
    """
    index = load_index(location)
    vocabulary = schema.label_vocabulary(index)
    decoder = ClipDecoder(
        cfg, float(index["clip_seconds"]), rank=0, train=False, classes=len(vocabulary.classes), audio=audio
    )
    keep = has_narration if audio else None
    decoded: list[dict] = []

    handler = TarErrors(decoder)
    for split in splits:
        if not any(s["split"] == split and s["clips"] > 0 for s in index["shards"]):
            continue
        if audio and not any(s["split"] == split and schema.narrated_clips(s) > 0 for s in index["shards"]):
            continue
        for shard in split_shards(location, index, split, narrated_only=audio):
            for sample in shard_samples(shard, handler, keep):
                out = decoder(sample)
                if out is not None:
                    decoded.append(out)
                if len(decoded) == max_clips:
                    break
            if len(decoded) == max_clips:
                break
    if not decoded:
        which = "clip with narration" if audio else "clip"
        raise ValueError(f"{redact(str(location))}: no decodable {which} in splits {splits}")
    if decoder.bad:
        log.warning(
            "%d clips of %s could not be decoded and are left out", decoder.bad, redact(str(location))
        )
    batch = BatchFinisher(cfg)(default_collate(decoded))
    return ClipSet(
        video=batch["video"],
        image=batch["image"],
        audio=batch.get("audio"),
        labels=batch["labels"],
        image_label=batch["image_label"],
        gaze=batch["gaze"],
        image_gaze=batch["image_gaze"],
        scan=list(batch["scan"]),
        skipped=decoder.bad,
        vocabulary=vocabulary,
    )
