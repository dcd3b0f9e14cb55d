"""One scan -> its clips: decode, resample to the stored grid, measure speech, encode each clip.

Runs wherever a scan is processed (in the build process, a local worker process or a Ray task),
so it takes and returns only plain data: the manifest row, hashed identifiers and options in,
the encoded clips and a record for index.json out. Errors name the manifest column at fault,
never the path.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sharding.dicom import is_dicom, read_dicom
from sharding.manifest import ScanRow
from sharding.mask import MaskError, MaskSpec, apply_mask
from sharding.media import MediaError, Timeline, encode_mp4, read_audio, read_video
from usvs_format import schema

VAD_FRAME_SECONDS = 0.02
VAD_THRESHOLD_DBFS = -40.0


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut and stored (the subset of the build options a scan task needs)."""

    clip_seconds: float
    stride_seconds: float
    min_speech_ratio: float
    fps: float
    size: int
    crf: int
    classes: tuple[str, ...] = schema.PLANES
    """The label vocabulary: a labels file names these classes (or gives their indices)."""
    mask: MaskSpec = MaskSpec()
    """What of each frame is kept (sharding.mask); the rest is black before encoding."""
    limits: Timeline = Timeline()
    """The plausibility limits of a scan's timeline."""
    narration: bool = True
    """False (--no-narration): no scan's audio is read or stored; every scan is video-only."""
    dicom_fps: float | None = None
    """Frame rate of DICOM cine loops that state none (--dicom-fps); None: such a loop fails."""


@dataclass(frozen=True)
class ScanTask:
    """One scan to cut: its manifest row, hashed ids, split, and clips already in complete shards."""

    position: int
    """Index of the scan in the manifest (0-based); results are written in this order."""
    row: ScanRow
    scan_hash: str
    patient_hash: str
    split: str
    skip_written: int = 0
    """Kept clips already in complete shards (a resumed build): counted, not encoded again."""


@dataclass
class Clip:
    """One clip ready to write."""

    key: str
    mp4: bytes
    meta: dict


@dataclass
class ScanResult:
    """What a scan task returns: clips to write and the scan's record for index.json."""

    position: int
    clips: list[Clip] = field(default_factory=list)
    record: dict = field(default_factory=dict)


class ScanFailure(Exception):
    """A scan cannot be sharded; `column` is the manifest column whose file is at fault."""

    def __init__(self, column: str, reason: str):
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


def failed_record(task: ScanTask, column: str, reason: str) -> dict:
    """The record of a scan that produced no clips: its ids, split, line, and the error."""
    return {
        "scan": task.scan_hash,
        "patient": task.patient_hash,
        "split": task.split,
        "line": task.row.row,
        "error": {"file": column, "reason": scrub(reason, task.row)},
        "cut_ratios": [],
        "written": 0,
        "labelled": 0,
        "seconds": 0.0,
        "tail_seconds": 0.0,
    }


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


def _read_table(path: Path, name: str, headers: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], list]:
    """(the header matched, the data rows) of a CSV whose header starts with one of `headers`.

    Errors never quote the file: a patient table put in the wrong column would land in
    index.json and the logs.
    """
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = tuple(h.strip() for h in next(reader, []))
            for expected in headers:
                if header[: len(expected)] == expected:
                    return expected, [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MediaError(f"cannot read {name} file: {type(exc).__name__}") from exc
    expected = " or ".join(",".join(h) for h in headers)
    raise MediaError(f"{name} file header is not {expected}")


SCAN_LABEL = ("label",)
"""Header of a labels file holding one label for the whole scan (a video-level label)."""


def read_labels(path: Path, n_frames: int, classes: tuple[str, ...] = schema.PLANES) -> np.ndarray:
    """Per-source-frame class indices into `classes`.

    The file is a `frame,plane` (or `frame,label`) CSV with one row per frame of the video, or a
    `label` CSV with one row: the class of every frame (a cine loop labelled as a whole). A
    class is a name of `classes` or its index.
    """
    header, rows = _read_table(path, "labels", (("frame", "plane"), ("frame", "label"), SCAN_LABEL))
    if header == SCAN_LABEL:
        if len(rows) != 1:
            raise MediaError(
                f"labels file with header 'label' has {len(rows)} rows, expected 1 (the scan's class)"
            )
        return np.full(n_frames, _class_index(rows[0][0], classes, 2), np.int64)
    if len(rows) != n_frames:
        raise MediaError(f"labels file has {len(rows)} rows, the video has {n_frames} frames")
    out = np.empty(n_frames, np.int64)
    for k, row in enumerate(rows):
        frame = row[0].strip()
        if not (frame.isascii() and frame.isdigit()) or int(frame) != k:
            raise MediaError(f"labels file row {k + 2}: column frame is not {k}")
        if len(row) < 2:
            raise MediaError(f"labels file row {k + 2}: column {header[1]} is missing")
        out[k] = _class_index(row[1], classes, k + 2)
    return out


def _class_index(cell: str, classes: tuple[str, ...], row: int) -> int:
    name = cell.strip()
    idx = classes.index(name) if name in classes else (int(name) if name.isascii() and name.isdigit() else -1)
    if not 0 <= idx < len(classes):
        raise MediaError(
            f"labels file row {row}: the class is not in the vocabulary "
            f"(a name of its {len(classes)} classes or an index 0-{len(classes) - 1})"
        )
    return idx


def read_gaze(path: Path, n_frames: int) -> np.ndarray:
    """Per-source-frame gaze points [n, 2] in [0, 1] from a `frame,x,y` CSV."""
    _, rows = _read_table(path, "gaze", (("frame", "x", "y"),))
    if len(rows) != n_frames:
        raise MediaError(f"gaze file has {len(rows)} rows, the video has {n_frames} frames")
    xy = np.empty((n_frames, 2), np.float32)
    for k, row in enumerate(rows):
        try:
            xy[k] = float(row[1]), float(row[2])
        except (IndexError, ValueError):
            raise MediaError(f"gaze file row {k + 2}: columns x,y are not two numbers") from None
        if not (0.0 <= xy[k, 0] <= 1.0 and 0.0 <= xy[k, 1] <= 1.0):
            raise MediaError(f"gaze file row {k + 2}: the point is outside [0, 1] (or not a number)")
    return xy


def _column(column: str, fn, *args):
    try:
        return fn(*args)
    except MediaError as exc:  # our messages: a reason class, counts, never a file's contents
        raise ScanFailure(column, str(exc)) from exc
    except (ValueError, OSError) as exc:  # a library's: it may quote a path, a cell or bytes
        raise ScanFailure(column, f"cannot read the file ({type(exc).__name__})") from exc


def cut_scan(task: ScanTask, opts: ClipOptions) -> ScanResult:
    """Cut one scan into clips every stride_seconds; failures become the record's `error`."""
    record = {"scan": task.scan_hash, "patient": task.patient_hash, "split": task.split, "line": task.row.row}
    try:
        return ScanResult(task.position, _cut(task, opts, record), record)
    except ScanFailure as exc:
        return ScanResult(task.position, [], failed_record(task, exc.column, exc.reason))
    except Exception as exc:  # one odd file must not end a build of thousands; it is reported
        # The error's class only: its message can quote the file's contents.
        return ScanResult(task.position, [], failed_record(task, "video", f"unexpected {type(exc).__name__}"))


_QUOTED_PATH = re.compile(r"""(['"])(?:[A-Za-z]:)?[/\\][^'"]*\1""")


def scrub(reason: str, row: ScanRow) -> str:
    """`reason` without the row's paths or file names (FFmpeg and OS errors quote them)."""
    for column in ("video", "audio", "labels", "gaze"):
        path = getattr(row, column)
        if path is not None:
            for text in sorted({str(path), str(path.resolve()), path.name}, key=len, reverse=True):
                reason = reason.replace(text, f"<{column} file>")
    return _QUOTED_PATH.sub("<path>", reason)


def _cut(task: ScanTask, opts: ClipOptions, record: dict) -> list[Clip]:
    row = task.row
    if not row.video.is_file():
        raise ScanFailure("video", "file does not exist or is not a regular file")
    dicom = is_dicom(row.video)  # by content: a DICOM's name need not end in .dcm
    if dicom:
        track = _column("video", read_dicom, row.video, opts.fps, opts.size, opts.dicom_fps, opts.limits)
    else:
        track = _column("video", read_video, row.video, opts.fps, opts.size, opts.limits)
    try:
        frames_THW, kept_share = apply_mask(track.frames_THW, opts.mask, track.source_wh)
    except MaskError as exc:
        raise ScanFailure("video", str(exc)) from exc
    if row.audio is not None and not row.audio.is_file():
        raise ScanFailure("audio", "file does not exist or is not a regular file")
    audio_column = "audio" if row.audio else "video"
    # An unreadable stream is damage and fails the scan; no stream at all (and an empty audio
    # cell) is a scan without narration, whose clips train the recipes that read no audio. A
    # DICOM cine has no sound track: its narration can only be a separate file.
    no_track = (dicom and row.audio is None) or not opts.narration
    audio = None if no_track else _column(audio_column, read_audio, row.audio or row.video, schema.AUDIO_RATE)
    if audio is None and row.audio is not None:
        raise ScanFailure("audio", "the audio file has no audio stream")
    if audio is not None and len(audio) == 0:
        raise ScanFailure(audio_column, "audio stream has no samples (zero duration)")
    if audio is not None:
        # A video cut short beside a whole narration (or the reverse) would pair clips with the
        # wrong speech, or with silence that was never spoken.
        video_s, audio_s = len(track.frames_THW) / opts.fps, len(audio) / schema.AUDIO_RATE
        if abs(video_s - audio_s) > Timeline.tolerance(video_s):
            raise ScanFailure(
                audio_column,
                f"the narration lasts {audio_s:.1f} s and the video {video_s:.1f} s "
                "(more than max(1 s, 5 %) apart)",
            )
    labels = (
        _column("labels", read_labels, row.labels, track.source_frames, opts.classes) if row.labels else None
    )
    gaze = _column("gaze", read_gaze, row.gaze, track.source_frames) if row.gaze else None

    per_clip = round(opts.clip_seconds * opts.fps)
    step = max(1, round((opts.stride_seconds or opts.clip_seconds) * opts.fps))
    samples = round(opts.clip_seconds * schema.AUDIO_RATE)
    n_frames = len(frames_THW)
    clips: list[Clip] = []
    cut_ratios: list[float] = []
    written = labelled = 0
    end = 0
    for j0 in range(0, n_frames - per_clip + 1, step):
        end = j0 + per_clip
        t0 = j0 / opts.fps
        clip_audio = None
        if audio is not None:
            a0 = round(t0 * schema.AUDIO_RATE)
            clip_audio = audio[a0 : a0 + samples]
            if len(clip_audio) < samples:
                clip_audio = np.pad(clip_audio, (0, samples - len(clip_audio)))
            ratio, loudness = speech_activity(clip_audio, schema.AUDIO_RATE)
            ratio = round(ratio, 4)  # the value index.json and the clip's json hold is the one filtered on
            cut_ratios.append(ratio)
            if ratio < opts.min_speech_ratio:
                continue  # counted: index.json keeps the histogram of every clip cut
        written += 1
        labelled += labels is not None
        if written <= task.skip_written:
            continue  # already in a complete shard of an interrupted build
        src = track.source_index_T[j0 : j0 + per_clip]
        meta = {
            schema.META_SCAN: task.scan_hash,
            schema.META_PATIENT: task.patient_hash,
            schema.META_T0: round(t0, 6),
            schema.META_T1: round(t0 + opts.clip_seconds, 6),
            schema.META_FPS: opts.fps,
            schema.META_FRAMES: per_clip,
            schema.META_NARRATION: clip_audio is not None,
        }
        if clip_audio is not None:
            meta[schema.META_SPEECH_RATIO] = ratio
            meta[schema.META_LOUDNESS] = round(loudness, 2)
        if labels is not None:
            meta[schema.META_LABELS] = labels[src].tolist()
        if gaze is not None:
            meta[schema.META_GAZE] = np.round(gaze[src], 4).tolist()
        mp4 = encode_mp4(
            frames_THW[j0 : j0 + per_clip], opts.fps, clip_audio, schema.AUDIO_RATE, crf=opts.crf
        )
        clips.append(Clip(schema.sample_key(task.scan_hash, t0), mp4, meta))
    cut_any = end > 0
    record.update(
        narrated=audio is not None,
        mask_kept_share=round(kept_share, 4),
        cut_ratios=cut_ratios,
        written=written,
        labelled=labelled,
        seconds=round(n_frames / opts.fps, 3),
        tail_seconds=round((n_frames - end) / opts.fps, 3) if cut_any else round(n_frames / opts.fps, 3),
        shorter_than_a_clip=not cut_any,
    )
    return clips
