"""`sharding build`: raw scans -> aligned clips -> WebDataset shards + index.json.

Each clip is transcoded at build time to the stored fps and size with its narration (16 kHz
mono) as an audio stream of the same mp4, so one Decord reader gives both and training decodes
little more than it uses. Identifiers are replaced by salted hashes before anything is written;
no source path or container tag reaches a shard or the index.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from sharding.manifest import ScanRow, read_manifest
from sharding.media import MediaError, encode_mp4, read_audio, read_video
from usvs_dist import __version__
from usvs_dist.data import schema

SALT_ENV = "USVS_SHARD_SALT"
VAD_FRAME_SECONDS = 0.02
VAD_THRESHOLD_DBFS = -40.0
SPEECH_HIST_EDGES = [round(x, 1) for x in np.linspace(0.0, 1.0, 11)]


class BuildError(ValueError):
    """The build cannot start (bad arguments, salt, or output folder)."""


@dataclass(frozen=True)
class BuildOptions:
    """What `sharding build` was asked to do."""

    clip_seconds: float = 2.0
    stride_seconds: float = 0.0
    """Start-to-start distance of clips; 0: clip_seconds (no overlap, no gap)."""
    min_speech_ratio: float = 0.0
    """Clips whose speech ratio is below this are not written (counted in index.json)."""
    fps: float = 8.0
    size: int = 64
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_clips: int = 200
    crf: int = 20
    overwrite: bool = False

    def validate(self) -> None:
        """Raise BuildError naming the first invalid option."""
        if self.clip_seconds <= 0:
            raise BuildError(f"--clip-seconds must be > 0, got {self.clip_seconds}")
        if self.stride_seconds < 0:
            raise BuildError(
                f"--stride-seconds must be > 0 (or 0: the clip length), got {self.stride_seconds}"
            )
        if not 0.0 <= self.min_speech_ratio <= 1.0:
            raise BuildError(f"--min-speech-ratio must be in [0, 1], got {self.min_speech_ratio}")
        if not 1 <= self.fps <= 120:
            raise BuildError(f"--fps must be in [1, 120], got {self.fps}")
        if self.size < 16 or self.size % 2:
            raise BuildError(f"--size must be an even integer >= 16, got {self.size}")
        if (
            len(self.split_fractions) != 3
            or any(f < 0 for f in self.split_fractions)
            or not math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-6)
        ):
            raise BuildError(
                f"--split must be three fractions train,val,test summing to 1, got {self.split_fractions}"
            )
        if self.shard_clips < 1:
            raise BuildError(f"--shard-clips must be >= 1, got {self.shard_clips}")


def read_salt(salt_file: Path | None) -> bytes:
    """The de-identification salt from a file or $USVS_SHARD_SALT; never written anywhere."""
    if salt_file is not None:
        if not salt_file.is_file():
            raise BuildError(f"salt file {salt_file} does not exist")
        salt = salt_file.read_bytes().strip()
    else:
        salt = os.environ.get(SALT_ENV, "").encode()
    if len(salt) < 8:
        raise BuildError(f"a salt of at least 8 bytes is needed: pass --salt-file FILE or set {SALT_ENV}")
    return salt


def hash_id(salt: bytes, kind: str, value: str) -> str:
    """Salted, kind-separated sha256 of an identifier, shortened to 16 hex digits."""
    return hashlib.sha256(salt + b"\0" + kind.encode() + b"\0" + value.encode()).hexdigest()[:16]


def assign_split(patient_hash: str, fractions: tuple[float, float, float]) -> str:
    """Split of a patient from its hash alone, so adding scans never moves earlier patients."""
    u = int(hashlib.sha256(b"split\0" + patient_hash.encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for split, frac in zip(schema.SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return split
    return schema.SPLITS[-1]


def speech_activity(audio_N: np.ndarray, rate: int) -> tuple[float, float]:
    """(speech ratio, loudness dBFS) by an energy detector.

    The clip is cut into 20 ms frames; a frame is speech when its RMS is at least -40 dBFS.
    Loudness is the RMS level of the speech frames (of the whole clip when there are none),
    floored at -120 dBFS.
    """
    hop = max(1, int(rate * VAD_FRAME_SECONDS))
    n = len(audio_N) // hop
    if n == 0:
        return 0.0, -120.0
    frames = audio_N[: n * hop].reshape(n, hop).astype(np.float64)
    power = (frames**2).mean(axis=1)
    db = 10 * np.log10(power + 1e-12)
    active = db >= VAD_THRESHOLD_DBFS
    level = power[active].mean() if active.any() else power.mean()
    return float(active.mean()), float(max(-120.0, 10 * np.log10(level + 1e-12)))


def _read_table(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    if not path.is_file():
        raise MediaError(f"{columns[1]} file is missing")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header[: len(columns)]) != columns:
            raise MediaError(f"{columns[1]} file header is {header}, expected {list(columns)}")
        return [row for row in reader if row]


def read_labels(path: Path, n_frames: int) -> np.ndarray:
    """Per-source-frame class indices from a `frame,plane` CSV (names of schema.PLANES or indices)."""
    rows = _read_table(path, ("frame", "plane"))
    if len(rows) != n_frames:
        raise MediaError(f"labels file has {len(rows)} rows, the video has {n_frames} frames")
    out = np.empty(n_frames, np.int64)
    for k, (frame, plane, *_) in enumerate(rows):
        if int(frame) != k:
            raise MediaError(f"labels file row {k + 2}: frame {frame}, expected {k}")
        plane = plane.strip()
        idx = (
            schema.PLANES.index(plane) if plane in schema.PLANES else (int(plane) if plane.isdigit() else -1)
        )
        if not 0 <= idx < len(schema.PLANES):
            raise MediaError(f"labels file row {k + 2}: plane {plane!r} is not in the vocabulary")
        out[k] = idx
    return out


def read_gaze(path: Path, n_frames: int) -> np.ndarray:
    """Per-source-frame gaze points [n, 2] in [0, 1] from a `frame,x,y` CSV."""
    rows = _read_table(path, ("frame", "x", "y"))
    if len(rows) != n_frames:
        raise MediaError(f"gaze file has {len(rows)} rows, the video has {n_frames} frames")
    xy = np.asarray([[float(r[1]), float(r[2])] for r in rows], np.float32)
    if not np.all((xy >= 0) & (xy <= 1)):
        raise MediaError("gaze file has points outside [0, 1]")
    return xy


@dataclass
class Clip:
    """One clip ready to write."""

    key: str
    mp4: bytes
    meta: dict


def cut_scan(row: ScanRow, scan_hash: str, patient_hash: str, opts: BuildOptions) -> tuple[list[Clip], float]:
    """All whole clips of one scan (every stride_seconds), and the seconds after the last one."""
    track = read_video(row.video, opts.fps, opts.size)
    audio = read_audio(row.audio or row.video, schema.AUDIO_RATE)
    if audio is None:
        raise MediaError("no audio stream in the video and no separate audio file")
    labels = read_labels(row.labels, track.source_frames) if row.labels else None
    gaze = read_gaze(row.gaze, track.source_frames) if row.gaze else None
    per_clip = round(opts.clip_seconds * opts.fps)
    step = max(1, round((opts.stride_seconds or opts.clip_seconds) * opts.fps))
    samples = round(opts.clip_seconds * schema.AUDIO_RATE)
    n_frames = len(track.frames_THW)
    clips: list[Clip] = []
    end = 0
    for j0 in range(0, n_frames - per_clip + 1, step):
        end = j0 + per_clip
        t0 = j0 / opts.fps
        t1 = t0 + opts.clip_seconds
        a0 = round(t0 * schema.AUDIO_RATE)
        clip_audio = audio[a0 : a0 + samples]
        if len(clip_audio) < samples:
            clip_audio = np.pad(clip_audio, (0, samples - len(clip_audio)))
        ratio, loudness = speech_activity(clip_audio, schema.AUDIO_RATE)
        src = track.source_index_T[j0 : j0 + per_clip]
        meta = {
            schema.META_SCAN: scan_hash,
            schema.META_PATIENT: patient_hash,
            schema.META_T0: round(t0, 6),
            schema.META_T1: round(t1, 6),
            schema.META_FPS: opts.fps,
            schema.META_FRAMES: per_clip,
            schema.META_SPEECH_RATIO: round(ratio, 4),
            schema.META_LOUDNESS: round(loudness, 2),
        }
        if labels is not None:
            meta[schema.META_LABELS] = labels[src].tolist()
        if gaze is not None:
            meta[schema.META_GAZE] = np.round(gaze[src], 4).tolist()
        mp4 = encode_mp4(
            track.frames_THW[j0 : j0 + per_clip], opts.fps, clip_audio, schema.AUDIO_RATE, crf=opts.crf
        )
        clips.append(Clip(schema.sample_key(scan_hash, t0), mp4, meta))
    tail = (n_frames - end) / opts.fps
    return clips, tail


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class _SplitWriter:
    """A ShardWriter for one split writing to temp names, renamed once each shard is closed."""

    out: Path
    split: str
    maxcount: int
    shards: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    writer: wds.ShardWriter | None = None

    def _finish(self, tmp_name: str) -> None:
        tmp = Path(tmp_name)
        final = self.out / tmp.name.removeprefix(".").removesuffix(".tmp")
        os.replace(tmp, final)
        self.shards.append(
            {
                "name": final.name,
                "split": self.split,
                "clips": self.counts.get(tmp_name, 0),
                "seconds": round(self.seconds.get(tmp_name, 0.0), 3),
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )

    def write(self, clip: Clip, seconds: float) -> None:
        if self.writer is None:
            pattern = str(self.out / f".{self.split}-%06d.tar.tmp")
            # mtime fixed so the same input gives the same bytes (and checksums) on every rerun.
            self.writer = wds.ShardWriter(
                pattern, maxcount=self.maxcount, post=self._finish, verbose=0, mtime=0.0
            )
        self.writer.write(
            {
                "__key__": clip.key,
                schema.VIDEO_KEY: clip.mp4,
                schema.META_KEY: json.dumps(clip.meta, sort_keys=True).encode(),
            }
        )
        name = self.writer.fname
        self.counts[name] = self.counts.get(name, 0) + 1
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _prepare_out(out: Path, overwrite: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    old = sorted(p for s in schema.SPLITS for p in out.glob(f"{s}-*.tar"))
    if (out / schema.INDEX_NAME).exists() or old:
        if not overwrite:
            raise BuildError(f"output folder {out} already holds shards; pass --overwrite to replace them")
    return old


def build(manifest: Path, out: Path, salt_file: Path | None, opts: BuildOptions, log=print) -> dict:
    """Shard every scan of `manifest` into `out`; returns the index written to index.json.

    The salt comes from `salt_file` or $USVS_SHARD_SALT (see read_salt).
    """
    opts.validate()
    rows = read_manifest(manifest)
    salt = read_salt(salt_file)
    old = _prepare_out(out, opts.overwrite)
    writers = {s: _SplitWriter(out, s, opts.shard_clips) for s in schema.SPLITS}
    patients: dict[str, set[str]] = {s: set() for s in schema.SPLITS}
    scans = {s: 0 for s in schema.SPLITS}
    ratios: list[float] = []
    cut_ratios: list[float] = []
    errors: list[dict] = []
    labelled = 0
    tail_seconds = 0.0
    started = time.monotonic()
    for i, row in enumerate(rows, start=1):
        scan_hash = hash_id(salt, "scan", row.scan_id)
        patient_hash = hash_id(salt, "patient", row.patient_id)
        split = assign_split(patient_hash, opts.split_fractions)
        try:
            clips, tail = cut_scan(row, scan_hash, patient_hash, opts)
        except (MediaError, ValueError, OSError) as exc:
            # stderr may name the source file; index.json only the manifest line and the hash.
            print(f"sharding build: skipped {row.video} (manifest line {row.row}): {exc}", file=sys.stderr)
            errors.append({"manifest_line": row.row, "scan": scan_hash, "reason": str(exc)})
            continue
        for clip in clips:
            cut_ratios.append(clip.meta[schema.META_SPEECH_RATIO])
            if clip.meta[schema.META_SPEECH_RATIO] < opts.min_speech_ratio:
                continue  # counted: the index keeps the histogram of every clip cut
            writers[split].write(clip, opts.clip_seconds)
            ratios.append(clip.meta[schema.META_SPEECH_RATIO])
            labelled += schema.META_LABELS in clip.meta
        patients[split].add(patient_hash)
        scans[split] += 1
        tail_seconds += tail
        rate = len(ratios) / max(time.monotonic() - started, 1e-9)
        log(f"build: scan {i}/{len(rows)} -> {split}, {len(clips)} clips ({rate:.1f} clips/s)")
    for w in writers.values():
        w.close()
    shards = sorted((s for w in writers.values() for s in w.shards), key=lambda s: s["name"])
    hist, _ = np.histogram(ratios, bins=SPEECH_HIST_EDGES)
    hist_cut, _ = np.histogram(cut_ratios, bins=SPEECH_HIST_EDGES)
    index = {
        "format_version": schema.FORMAT_VERSION,
        "tool_version": __version__,
        "clip_seconds": opts.clip_seconds,
        "stride_seconds": opts.stride_seconds or opts.clip_seconds,
        "min_speech_ratio": opts.min_speech_ratio,
        "fps": opts.fps,
        "size": [opts.size, opts.size],
        "audio_rate": schema.AUDIO_RATE,
        "shards": shards,
        "splits": {
            s: {
                "clips": sum(x["clips"] for x in shards if x["split"] == s),
                "seconds": round(sum(x["seconds"] for x in shards if x["split"] == s), 3),
                "scans": scans[s],
                "patients": sorted(patients[s]),
            }
            for s in schema.SPLITS
        },
        "totals": {
            "clips": len(ratios),
            "seconds": round(len(ratios) * opts.clip_seconds, 3),
            "scans": sum(scans.values()),
            "failed_scans": len(errors),
            "tail_seconds_dropped": round(tail_seconds, 3),
            "clips_below_min_speech": len(cut_ratios) - len(ratios),
        },
        "speech_ratio_histogram": {"edges": SPEECH_HIST_EDGES, "counts": hist.tolist()},
        # Every clip cut, before --min-speech-ratio: what the filter saw.
        "speech_ratio_histogram_cut": {"edges": SPEECH_HIST_EDGES, "counts": hist_cut.tolist()},
        "labels": {"vocabulary": list(schema.PLANES), "clips_with_labels": labelled},
        "errors": errors,
    }
    tmp = out / f".{schema.INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / schema.INDEX_NAME)
    written = {s["name"] for s in shards}
    for path in old:
        if path.name not in written:
            path.unlink()
    return index
