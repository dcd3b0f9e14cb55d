"""`sharding inspect`: summarise index.json, decode samples, and optionally verify checksums."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import decord

from sharding.writer import sha256_file
from usvs_format import schema

MAX_ERRORS_SHOWN = 20


def decode_first(shard: Path) -> str:
    """Decode the first sample of a shard with Decord; returns a one-line description."""
    with tarfile.open(shard) as tar:
        members = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if len(members[key]) == 2:
                break
    key, sample = next(iter(members.items()))
    meta = json.loads(sample[schema.META_KEY])
    video = decord.VideoReader(io.BytesIO(sample[schema.VIDEO_KEY]), num_threads=1)
    frames = video.get_batch(list(range(min(len(video), meta[schema.META_FRAMES])))).asnumpy()
    labelled = "yes" if schema.META_LABELS in meta else "no"
    if not schema.narrated(meta):
        return f"{key}: video {tuple(frames.shape)} no narration labels={labelled}"
    audio = decord.AudioReader(io.BytesIO(sample[schema.VIDEO_KEY]), sample_rate=schema.AUDIO_RATE, mono=True)
    return (
        f"{key}: video {tuple(frames.shape)} audio {audio.shape} "
        f"speech_ratio={meta[schema.META_SPEECH_RATIO]} labels={labelled}"
    )


def inspect(folder: Path, verify: bool = False, log=print) -> int:
    """Print the summary; with `verify`, re-hash every shard and decode one sample of each.

    Returns the number of problems found (0 when all is well).
    """
    index = schema.read_index(folder)
    totals = index["totals"]
    log(
        f"{folder}: format v{index['format_version']}, {totals['clips']} clips, {totals['seconds']} s, "
        f"{totals['scans']} scans ({totals['failed_scans']} failed); clips {index['clip_seconds']} s "
        f"at {index['fps']} fps, {index['size'][0]}x{index['size'][1]}, audio {index['audio_rate']} Hz"
    )
    if "clips_without_narration" in totals:
        log(
            f"  {totals['clips_with_narration']} clips with narration, {totals['clips_without_narration']} "
            f"without ({totals['scans_without_narration']} video-only scans)"
        )
    vocabulary = schema.label_vocabulary(index)
    coarse = f", grouped into {len(vocabulary.coarse)} coarse classes" if vocabulary.coarse else ""
    log(
        f"  labels: {len(vocabulary.classes)} classes{coarse}; "
        f"{index['labels']['clips_with_labels']} clips labelled"
    )
    for split, info in index["splits"].items():
        log(f"  {split}: {info['clips']} clips, {info['scans']} scans, {len(info['patients'])} patients")
    hist = index["speech_ratio_histogram"]
    log(f"  speech ratio histogram {hist['counts']} over edges {hist['edges']}")
    for error in index.get("errors", [])[:MAX_ERRORS_SHOWN]:
        where = f"manifest line {error['manifest_line']} ({error.get('file', '?')} file)"
        log(f"  failed scan: {where}: {error['reason']}")
    if len(index.get("errors", [])) > MAX_ERRORS_SHOWN:
        log(f"  ... and {len(index['errors']) - MAX_ERRORS_SHOWN} more failed scans (index.json 'errors')")
    problems = 0
    shards = index["shards"] if verify else index["shards"][:1]
    for shard in shards:
        path = folder / shard["name"]
        if not path.is_file():
            log(f"  MISSING {shard['name']}")
            problems += 1
            continue
        if verify and sha256_file(path) != shard["sha256"]:
            log(f"  CHECKSUM MISMATCH {shard['name']}")
            problems += 1
            continue
        try:
            log(f"  {shard['name']}: {decode_first(path)}")
        except Exception as exc:  # any decode failure is a problem to report, not a crash
            log(f"  UNDECODABLE {shard['name']}: {type(exc).__name__}: {exc}")
            problems += 1
    return problems
