"""Evaluation clips: the clips of some splits, decoded without augmentation (centre frames) and
held in memory, at most `eval.max_clips` of them.

A set that holds more clips than that is sampled (`stratified_rows`): seeded by `eval.seed`, the
budget split as evenly as possible over the scans (every scan represented while the budget has a
clip for each), and each scan's share spread over its length. Taking the first clips in shard
order instead would, at paper scale (~900 clips a scan), read 2-3 scans and starve the k folds
by scan.

What the sample costs: index.json counts clips per shard but does not say which scans a shard
holds, so a listing pass (`list_candidates`) reads each shard's tar headers and its small json
members, nothing decoded (local shards: seeks past the mp4s; URLs and pipes: one sequential read
of the bytes). The decode pass then opens only the shards holding a sampled clip and decodes
only the sampled clips. A set within the budget is decoded in one pass, as before.
"""

from __future__ import annotations

import json
import logging
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import default_collate
from webdataset.tariterators import base_plus_ext

from usvs_dist.config import redact
from usvs_dist.config.schema import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.decode import BatchFinisher, ClipDecoder, TarErrors, has_narration
from usvs_dist.data.epoch import shard_samples
from usvs_dist.data.shards import Shard, load_index, open_shard, split_shards

log = logging.getLogger(__name__)


@dataclass
class ClipSet:
    """Decoded clips: tensors stacked over N clips, and each clip's (hashed) scan id and split."""

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
    """Each clip's scan: the salted hash `sharding build` writes into its json, never a name."""
    skipped: int
    """Clips that could not be decoded (logged)."""
    vocabulary: schema.Vocabulary = schema.FETAL_PLANES
    """The shards' label classes (index.json)."""
    split: list[str] = field(default_factory=list)
    """Each clip's split (empty: not recorded)."""
    available: int = 0
    """Clips the splits hold (index.json; with narration, for a set that reads it): more than
    len(self) when the set was sampled down to eval.max_clips."""

    def __len__(self) -> int:
        return len(self.scan)

    def subset(self, rows: torch.Tensor | list[int]) -> ClipSet:
        """The clips at `rows`."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        picked = rows.tolist()
        return ClipSet(
            self.video[rows],
            self.image[rows],
            None if self.audio is None else self.audio[rows],
            self.labels[rows],
            self.image_label[rows],
            self.gaze[rows],
            self.image_gaze[rows],
            [self.scan[i] for i in picked],
            self.skipped,
            self.vocabulary,
            [self.split[i] for i in picked] if self.split else [],
            self.available,
        )

    def class_counts(self) -> list[int]:
        """Clips per class of the vocabulary (by the centre frame's label; unlabelled not counted)."""
        labelled = self.image_label[self.image_label >= 0]
        return torch.bincount(labelled, minlength=len(self.vocabulary.classes)).tolist()

    def by_split(self) -> dict[str, tuple[int, list[str]]]:
        """{split: (clips, its scans' hashed ids sorted)} in the order the splits were read."""
        out: dict[str, tuple[int, list[str]]] = {}
        for split in dict.fromkeys(self.split):
            rows = [i for i, s in enumerate(self.split) if s == split]
            out[split] = (len(rows), sorted({self.scan[i] for i in rows}))
        return out


def stratified_rows(scans: list[str], budget: int, seed: int) -> list[int]:
    """Rows (ascending) of a seeded, scan-stratified sample of at most `budget` of the clips.

    `scans[i]` is clip i's scan; a scan's clips are taken to be in time order (shard order is).
    Every row when there are no more than `budget`. Otherwise each scan gets an even share of the
    budget, a scan with fewer clips than its share gives the rest to the others (water filling),
    and the remainder of the division goes one clip each to scans drawn by `seed`; with fewer clips
    in the budget than scans, one clip each for `budget` scans drawn by `seed`. So shares differ by
    one at most among the scans that have enough clips. Within a scan, q of its m clips are taken
    at a seeded offset u in [0, 1) and stride m / q: clip floor((j + u) * m / q) for j < q, spread
    over the scan's length rather than its first clips.
    """
    if budget < 0:
        raise ValueError(f"a sample of {budget} clips: the budget must be >= 0")
    if len(scans) <= budget:
        return list(range(len(scans)))
    rows_of: dict[str, list[int]] = {}
    for row, scan in enumerate(scans):
        rows_of.setdefault(scan, []).append(row)
    rng = random.Random(f"eval-clips-{seed}")
    drawn = sorted(rows_of)
    rng.shuffle(drawn)
    rank = {scan: n for n, scan in enumerate(drawn)}  # seeded tie-break and remainder order

    quota: dict[str, int] = {}
    left = budget
    by_size = sorted(rows_of, key=lambda s: (len(rows_of[s]), rank[s]))
    for n, scan in enumerate(by_size):
        waiting = len(by_size) - n
        if len(rows_of[scan]) * waiting <= left:  # within an even share of what is left: all of it
            quota[scan] = len(rows_of[scan])
            left -= quota[scan]
            continue
        # This scan and every larger one have more clips than an even share: split what is left.
        rest = sorted(by_size[n:], key=rank.__getitem__)
        share, extra = divmod(left, waiting)
        for k, other in enumerate(rest):
            quota[other] = share + (k < extra)
        break

    picked: list[int] = []
    for scan, rows in rows_of.items():
        q, m = quota[scan], len(rows)
        if q == 0:
            continue
        offset = random.Random(f"eval-clips-{seed}-{scan}").random()
        picked += [rows[int((j + offset) * m / q)] for j in range(q)]
    return sorted(picked)


@dataclass(frozen=True)
class Candidate:
    """A clip as the listing pass sees it: no frame decoded."""

    shard: int
    """Index into the shards listed."""
    key: str
    scan: str
    narrated: bool


def _shard_keys(shard: Shard) -> list[tuple[str, str, bool]]:
    """(key, scan, narrated) of every sample of one shard, in order, from tar headers and json."""
    found: dict[str, tuple[str, bool]] = {}
    with open_shard(shard.url) as stream:
        seekable = getattr(stream, "seekable", lambda: False)()
        # Random access seeks past the mp4 members; a stream (URL, pipe:) reads them and drops them.
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)
                if key is None or not member.isreg() or Path(key).name.startswith("__"):
                    continue
                # Sample keys are `{scan_hash}_{t0_ms}` (usvs_format.sample_key): the scan until a
                # readable json says otherwise. An unreadable json counts as narrated, as in the
                # decode pass, so the decoder sees the clip and counts it bad.
                scan, narrated = found.get(key, (Path(key).name.rsplit("_", 1)[0], True))
                if ext.lower() == schema.META_KEY:
                    try:
                        meta = json.loads(tar.extractfile(member).read())
                        scan, narrated = str(meta[schema.META_SCAN]), schema.narrated(meta)
                    except (ValueError, TypeError, KeyError, AttributeError):
                        pass
                found[key] = (scan, narrated)
    return [(key, scan, narrated) for key, (scan, narrated) in found.items()]


def list_candidates(shards: list[Shard], handler: TarErrors, audio: bool) -> list[Candidate]:
    """Every clip of `shards` (with `audio`, those with narration) without decoding any; a shard
    that cannot be read is reported to `handler` (counted as a bad sample) and left out."""
    out: list[Candidate] = []
    for n, shard in enumerate(shards):
        try:
            keys = _shard_keys(shard)
        except (OSError, tarfile.TarError, EOFError) as exc:
            exc.args = (*exc.args, shard.url)
            handler(exc)
            continue
        out += [Candidate(n, key, scan, narrated) for key, scan, narrated in keys if narrated or not audio]
    return out


def load_clips(
    cfg: DataConfig,
    location: str | Path,
    splits: list[str],
    max_clips: int,
    audio: bool = True,
    seed: int = 0,
) -> ClipSet:
    """The clips of `splits`, without augmentation: all of them, or when they hold more than
    `max_clips` a scan-stratified sample of that many drawn by `seed` (see the module docstring).

    With `audio`, only clips with narration, and their log-mel; without, every clip and no audio.
    Splits without such clips at `location` are passed over (a separate evaluation shard set may
    hold only some splits); none at all is a ValueError naming the splits that have some.
    """
    index = load_index(location)
    vocabulary = schema.label_vocabulary(index)
    decoder = ClipDecoder(
        cfg, float(index["clip_seconds"]), rank=0, train=False, classes=len(vocabulary.classes), audio=audio
    )
    handler = TarErrors(decoder)
    count = schema.narrated_clips if audio else (lambda s: int(s["clips"]))
    shards: list[Shard] = []
    split_of: list[str] = []
    for split in splits:
        if any(s["split"] == split and count(s) > 0 for s in index["shards"]):
            found = split_shards(location, index, split, narrated_only=audio)
            shards += found
            split_of += [split] * len(found)
    which = "clip with narration" if audio else "clip"
    if not shards:
        have = sorted({s["split"] for s in index["shards"] if count(s) > 0})
        raise ValueError(
            f"{redact(str(location))}: no decodable {which} in split(s) {', '.join(splits)} "
            f"(splits holding one here: {', '.join(have) or 'none'})"
        )
    available = sum(s.clips for s in shards)

    wanted: dict[int, set[str]] | None = None  # None: decode every clip
    if available > max_clips:
        candidates = list_candidates(shards, handler, audio)
        rows = stratified_rows([c.scan for c in candidates], max_clips, seed)
        wanted = {}
        for row in rows:
            wanted.setdefault(candidates[row].shard, set()).add(candidates[row].key)

    decoded: list[dict] = []
    decoded_split: list[str] = []
    keep_narrated = has_narration if audio else None
    for n, shard in enumerate(shards):
        keys = None if wanted is None else wanted.get(n)
        if wanted is not None and not keys:
            continue  # no sampled clip in this shard: not opened

        def keep(sample: dict, keys: set[str] | None = keys) -> bool:
            if keys is not None and sample.get("__key__") not in keys:
                return False
            return keep_narrated is None or keep_narrated(sample)

        for sample in shard_samples(shard, handler, keep):
            out = decoder(sample)
            if out is not None:
                decoded.append(out)
                decoded_split.append(split_of[n])
    if not decoded:
        raise ValueError(f"{redact(str(location))}: no decodable {which} in split(s) {', '.join(splits)}")
    if decoder.bad:
        log.warning(
            "%d clips of %s could not be decoded and are left out", decoder.bad, redact(str(location))
        )
    batch = BatchFinisher(cfg)(default_collate(decoded))
    clips = ClipSet(
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
        split=decoded_split,
        available=available,
    )
    _log_selection(clips, splits, max_clips, seed)
    return clips


def _log_selection(clips: ClipSet, splits: list[str], max_clips: int, seed: int) -> None:
    """Clips, scans and classes loaded (counts only: no scan ids in logs)."""
    per_split = ", ".join(f"{s}: {n} clips of {len(ids)} scans" for s, (n, ids) in clips.by_split().items())
    how = (
        f"a scan-stratified sample (eval.max_clips={max_clips}, eval.seed={seed}) of {clips.available}"
        if clips.available > max_clips
        else f"all {clips.available}"
    )
    log.info(
        "evaluation clips of split(s) %s: %d clips of %d scans (%s), %s clips there",
        ", ".join(splits),
        len(clips),
        len(set(clips.scan)),
        per_split,
        how,
    )
    counts = clips.class_counts()
    if sum(counts):
        named = zip(clips.vocabulary.classes, counts, strict=True)
        log.info("evaluation clips per class: %s", ", ".join(f"{k} ({n})" for k, n in named))
