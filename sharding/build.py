"""`sharding build`: raw scans -> aligned clips -> WebDataset shards + index.json.

Each clip is transcoded at build time to the stored fps and size with its narration (16 kHz
mono) as an audio stream of the same mp4, so one Decord reader gives both and training decodes
little more than it uses. Identifiers are replaced by salted hashes before anything is written;
no source path or container tag reaches a shard or the index.

Scans are cut in this process, on `workers` local processes or as Ray tasks (sharding.runners);
the results are written here, in manifest order, so the shards do not depend on how many
workers cut them. A journal of finished shards lets an interrupted build resume (sharding.writer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sharding.cut import ClipOptions, ScanResult, ScanTask, cut_scan, failed_record
from sharding.deid import SaltError, assign_split, hash_id, read_salt
from sharding.dicom import FPS_RANGE as DICOM_FPS_RANGE
from sharding.manifest import ScanRow, read_manifest
from sharding.mask import MaskSpec
from sharding.media import Timeline
from sharding.runners import describe, make_runner
from sharding.writer import JOURNAL_NAME, Journal, Resumed, SplitShards, verify_journal, write_atomic
from usvs_format import ConfigError, __version__, schema

SPEECH_HIST_EDGES = [round(x, 1) for x in np.linspace(0.0, 1.0, 11)]


class BuildError(ValueError):
    """The build cannot start (bad arguments, salt, or output folder)."""


class OptionError(BuildError, ConfigError):
    """A build option is invalid: a BuildError (the build cannot start) and the ConfigError that
    every bad setting of either tool raises; the message names the command-line flag."""


def _flag(option: str) -> str:
    """The command-line flag of a BuildOptions or Execution field."""
    return "--split" if option == "split_fractions" else "--" + option.replace("_", "-")


class ShardWriteError(RuntimeError):
    """Writing a shard failed (disk full, I/O error); complete shards stay for a resume."""


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
    vocabulary: schema.Vocabulary = schema.FETAL_PLANES
    """The label classes labels files name (--labels-vocabulary), written to index.json."""
    mask: str = "auto"
    """Pixel de-identification (--mask): auto, none or box:x0,y0,x1,y1 (sharding.mask)."""
    max_gap_seconds: float = Timeline.max_gap_seconds
    """A jump between two frames' timestamps larger than this fails the scan."""
    max_scan_seconds: float = Timeline.max_scan_seconds
    """A scan longer than this fails (checked while decoding)."""
    narration: bool = True
    """False (--no-narration): no narration is read or stored, e.g. when it may hold spoken names."""
    overwrite: bool = False
    dicom_fps: float | None = None
    """Frame rate of DICOM cine loops whose file states none; None: such a scan fails."""

    def __post_init__(self) -> None:
        """Raise OptionError naming the flag of the first invalid option."""
        # NaN slips through range checks (every comparison with it is False) and inf passes
        # lower bounds: refuse both for every float option before its own range check.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            self._require(
                not any(isinstance(x, float) and not math.isfinite(x) for x in numbers),
                f.name,
                "a finite number",
            )
        self._require(self.clip_seconds > 0, "clip_seconds", "> 0")
        self._require(self.stride_seconds >= 0, "stride_seconds", "> 0 (or 0: the clip length)")
        self._require(0.0 <= self.min_speech_ratio <= 1.0, "min_speech_ratio", "in [0, 1]")
        self._require(1 <= self.fps <= 120, "fps", "in [1, 120]")
        self._require(self.size >= 16 and not self.size % 2, "size", "an even integer >= 16")
        self._require(
            len(self.split_fractions) == len(schema.SPLITS)
            and all(f >= 0 for f in self.split_fractions)
            and math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-6),
            "split_fractions",
            "three fractions train,val,test summing to 1",
        )
        self._require(self.shard_clips >= 1, "shard_clips", ">= 1")
        if not 0 < self.max_gap_seconds <= self.max_scan_seconds:
            raise OptionError(
                f"{_flag('max_gap_seconds')} {self.max_gap_seconds} and {_flag('max_scan_seconds')} "
                f"{self.max_scan_seconds} must satisfy 0 < gap <= scan"
            )
        try:
            MaskSpec.parse(self.mask)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        low, high = DICOM_FPS_RANGE
        self._require(
            self.dicom_fps is None or low <= self.dicom_fps <= high,
            "dicom_fps",
            f"a frame rate in [{low:g}, {high:g}] frames/s",
        )

    def _require(self, ok: bool, name: str, expected: str) -> None:
        if not ok:
            raise OptionError(f"{_flag(name)} must be {expected}, got {getattr(self, name)}")

    def clip_options(self) -> ClipOptions:
        """The options a scan task needs."""
        return ClipOptions(
            self.clip_seconds,
            self.stride_seconds,
            self.min_speech_ratio,
            self.fps,
            self.size,
            self.crf,
            classes=self.vocabulary.classes,
            mask=MaskSpec.parse(self.mask),
            limits=Timeline(self.max_gap_seconds, self.max_scan_seconds),
            narration=self.narration,
            dicom_fps=self.dicom_fps,
        )


@dataclass(frozen=True)
class Execution:
    """Where scans are cut and whether progress is shown; does not change the shards."""

    workers: int = 1
    ray_address: str | None = None
    progress: bool = False
    log_paths: bool = False
    """Name the source file of a skipped scan on stderr (else only its manifest line and column)."""
    isolate: bool = False
    """With one worker, cut scans in a worker process anyway, so a crash costs only its scan
    (the CLI's default; in this process is for tests and debuggers)."""

    def __post_init__(self) -> None:
        """Raise OptionError when there is no worker to cut scans."""
        if self.workers < 1:
            raise OptionError(f"{_flag('workers')} must be >= 1, got {self.workers}")


def _plan(rows: list[ScanRow], salt: bytes, opts: BuildOptions) -> tuple[list[ScanTask], dict[int, dict]]:
    """A task per scan, and failure records for rows whose scan_id repeats an earlier row's."""
    tasks, failed = [], {}
    first_line: dict[str, int] = {}
    for position, row in enumerate(rows):
        scan_hash = hash_id(salt, "scan", row.scan_id)
        patient_hash = hash_id(salt, "patient", row.patient_id)
        split = assign_split(patient_hash, opts.split_fractions)
        # Workers (processes, Ray tasks and their object store) get the row without its ids.
        task = ScanTask(
            position, dataclasses.replace(row, scan_id="", patient_id=""), scan_hash, patient_hash, split
        )
        if row.scan_id in first_line:
            reason = f"duplicate scan_id (first on manifest line {first_line[row.scan_id]})"
            failed[position] = failed_record(task, "scan_id", reason)
        else:
            first_line[row.scan_id] = row.row
        tasks.append(task)
    return tasks, failed


def _crashed(task: ScanTask, reason: str) -> ScanResult:
    """The result of a scan whose worker process died on every try: a failed scan, the build goes on."""
    return ScanResult(task.position, [], failed_record(task, "video", reason))


def _fingerprint(tasks: list[ScanTask], opts: BuildOptions) -> str:
    """Identifies the build's inputs and options, so a resume never mixes two different builds."""
    settings = {k: v for k, v in asdict(opts).items() if k != "overwrite"}
    scans = [(t.scan_hash, t.patient_hash, t.split) for t in tasks]
    blob = json.dumps([schema.FORMAT_VERSION, settings, scans], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _prepare_out(out: Path, fingerprint: str, overwrite: bool, log) -> Resumed:
    """Make `out` ready: fresh, cleared (--overwrite), or an interrupted build's shards verified."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    journal = out / JOURNAL_NAME
    old = sorted(p for s in schema.SPLITS for p in out.glob(f"{s}-*.tar"))
    index = out / schema.INDEX_NAME
    if overwrite:
        for path in [*old, index, journal, *(out / wids_name(s) for s in schema.SPLITS)]:
            path.unlink(missing_ok=True)
        return Resumed({}, {})
    header, entries = Journal.read(journal)
    if header is not None:
        if header.get("fingerprint") != fingerprint:
            raise BuildError(
                f"output folder {out} holds an unfinished build of another manifest or other options; "
                "pass --overwrite to start again"
            )
        resumed = verify_journal(out, entries)
        kept = {s["name"] for shards in resumed.shards.values() for s in shards}
        for path in old:
            if path.name not in kept:
                path.unlink()  # written after the last journaled shard, or changed since
        log(f"build: resuming an interrupted build; {len(kept)} complete shard(s) verified and kept")
        return resumed
    if index.exists() or old:
        raise BuildError(f"output folder {out} already holds shards; pass --overwrite to replace them")
    return Resumed({}, {})


def _report(record: dict, row: ScanRow, with_path: bool) -> None:
    error = record["error"]
    column = error["file"]
    where = ""
    if with_path and column in ("video", "audio", "labels", "gaze"):
        where = f" {getattr(row, column, None) or row.video}"
    # Paths can name patients and logs travel (Ray job logs, CI): by default the manifest line
    # and column say which file; --log-paths adds the path for an operator on the secure machine.
    print(
        f"sharding build: skipped manifest line {row.row} ({column} file{where}): {error['reason']}",
        file=sys.stderr,
    )


def _remaining(
    tasks: list[ScanTask], records: dict[int, dict], resumed: Resumed, out: Path
) -> list[ScanTask]:
    """The scans still to cut; scans whose clips are all in kept shards get their journaled record."""
    todo: list[ScanTask] = []
    for task in tasks:
        if task.position in records:
            continue  # failed in planning (a repeated scan_id)
        through = resumed.through(task.split)
        old = resumed.records.get(task.position)
        if through is None or task.position > through[0]:
            todo.append(task)
        elif task.position < through[0] or (old is not None and old["written"] == through[1]):
            if old is None:
                raise BuildError(
                    f"the build journal in {out} lacks manifest line {task.row.row}; "
                    "pass --overwrite to start again"
                )
            records[task.position] = old
        else:  # the kept shards end inside this scan: cut it again, skip what they hold
            todo.append(ScanTask(**{**task.__dict__, "skip_written": through[1]}))
    return todo


def build(
    manifest: Path,
    out: Path,
    salt_file: Path | None,
    opts: BuildOptions,
    log=print,
    execution: Execution = Execution(),
) -> dict:
    """Shard every scan of `manifest` into `out`; returns the index written to index.json.

    The salt comes from `salt_file` or $USVS_SHARD_SALT (see deid.read_salt). An interrupted
    build into the same folder with the same manifest and options resumes.
    """
    rows = read_manifest(manifest)
    try:
        salt = read_salt(salt_file)
    except SaltError as exc:
        raise BuildError(str(exc)) from None
    tasks, records = _plan(rows, salt, opts)
    fingerprint = _fingerprint(tasks, opts)
    resumed = _prepare_out(out, fingerprint, opts.overwrite, log)

    todo = _remaining(tasks, records, resumed, out)
    for position, record in sorted(records.items()):
        if "error" in record:
            _report(record, rows[position], execution.log_paths)

    kept = [s for split in schema.SPLITS for s in resumed.shards.get(split, [])]
    journal = Journal.create(
        out / JOURNAL_NAME,
        {"fingerprint": fingerprint, "format_version": schema.FORMAT_VERSION},
        [{"scan": p, "record": r} for p, r in sorted(records.items())] + [{"shard": s} for s in kept],
    )
    writers = {
        s: SplitShards(out, s, opts.shard_clips, journal, next_index=len(resumed.shards.get(s, [])))
        for s in schema.SPLITS
    }
    runner = make_runner(
        execution.workers, execution.ray_address, on_crash=_crashed, isolate=execution.isolate
    )
    where = describe(execution.workers, execution.ray_address, execution.isolate)
    log(f"build: {len(todo)} of {len(tasks)} scans to cut in {where}")
    sizes = [_size(t.row.video) for t in todo]
    bar = tqdm(
        total=sum(sizes),
        unit="B",
        unit_scale=True,
        desc="build",
        file=sys.stderr,
        disable=not execution.progress,
        bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {postfix} [{elapsed}<{remaining}]",
    )
    clips_done = 0
    try:
        for done, (task, size, result) in enumerate(
            zip(todo, sizes, runner(cut_scan, todo, opts.clip_options()), strict=True), start=1
        ):
            record = result.record
            journal.append({"scan": task.position, "record": record})
            records[task.position] = record
            if "error" in record:
                _report(record, task.row, execution.log_paths)
            for k, clip in enumerate(result.clips, start=task.skip_written + 1):
                writers[task.split].write(clip, opts.clip_seconds, task.position, k)
            clips_done += len(result.clips)
            bar.update(size)
            rate = clips_done / max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix_str(f"scan {done}/{len(todo)}, {clips_done} clips, {rate:.1f} clips/s")
        for w in writers.values():
            w.close()
    except OSError as exc:
        for w in writers.values():
            w.abort()
        complete = len(kept) + sum(len(w.finished) for w in writers.values())
        raise ShardWriteError(
            f"writing shards into {out} failed ({exc.strerror or exc}); the open shard was removed and "
            f"{complete} complete shard(s) kept: rerun the same command to resume"
        ) from exc
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
        journal.close()

    shards = sorted(kept + [s for w in writers.values() for s in w.finished], key=lambda s: s["name"])
    index = _index(opts, shards, [records[p] for p in sorted(records)])
    text = json.dumps(index, indent=2)
    for split, wids in wids_indexes(index, hashlib.sha256(text.encode()).hexdigest()).items():
        write_atomic(out / wids_name(split), json.dumps(wids, indent=2))
    write_atomic(out / schema.INDEX_NAME, text)
    (out / JOURNAL_NAME).unlink()
    return index


def wids_name(split: str) -> str:
    """File name of a split's wids shard index, beside index.json."""
    return f"{split}.wids.json"


def wids_indexes(index: dict, index_sha256: str) -> dict[str, dict]:
    """Per split with shards, a wids shard index (webdataset's indexed reader, `wids`) of its shards.

    Format `wids-shard-index-v1`: `shardlist` of {url, nsamples} (one sample per clip), urls
    relative to the file (wids resolves them against the folder it read the file from), so the
    folder can be copied or uploaded as it is. `name`, which wids uses for its cache folder, is
    the split and index.json's sha256 prefix: another build never shares a cache entry.
    """
    out = {}
    for split in schema.SPLITS:
        shards = [s for s in index["shards"] if s["split"] == split]
        if shards:  # wids refuses an empty shardlist
            out[split] = {
                "__kind__": "wids-shard-index-v1",
                "wids_version": 1,
                "name": f"{split}-{index_sha256[:16]}",
                "shardlist": [
                    {"url": s["name"], "nsamples": s["clips"], "filesize": s["bytes"]} for s in shards
                ],
            }
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _summary(values: list[float]) -> dict:
    """min, mean and max of per-scan values (None each when there are none)."""
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 4), "max": max(values)}


def _index(opts: BuildOptions, shards: list[dict], records: list[dict]) -> dict:
    """index.json from the finished shards and every scan's record (docs/architecture.md, shard format)."""
    shards = [{k: v for k, v in s.items() if k != "through"} for s in shards]
    ok = [r for r in records if "error" not in r]
    cut_ratios = [x for r in ok for x in r["cut_ratios"]]
    kept_ratios = [x for x in cut_ratios if x >= opts.min_speech_ratio]
    hist, _ = np.histogram(kept_ratios, bins=SPEECH_HIST_EDGES)
    hist_cut, _ = np.histogram(cut_ratios, bins=SPEECH_HIST_EDGES)
    clips = sum(r["written"] for r in ok)
    narrated = sum(schema.narrated_clips(s) for s in shards)
    return {
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
                "clips_with_narration": sum(schema.narrated_clips(x) for x in shards if x["split"] == s),
                "seconds": round(sum(x["seconds"] for x in shards if x["split"] == s), 3),
                "scans": sum(r["split"] == s for r in ok),
                "patients": sorted({r["patient"] for r in ok if r["split"] == s}),
            }
            for s in schema.SPLITS
        },
        "totals": {
            "clips": clips,
            "seconds": round(clips * opts.clip_seconds, 3),
            "clips_with_narration": narrated,
            "clips_without_narration": clips - narrated,
            "scans": len(ok),
            "scans_without_narration": sum(not r.get("narrated", True) for r in ok),
            "scan_seconds": round(sum(r["seconds"] for r in ok), 3),
            "failed_scans": len(records) - len(ok),
            "scans_shorter_than_a_clip": sum(r["shorter_than_a_clip"] for r in ok),
            "tail_seconds_dropped": round(sum(r["tail_seconds"] for r in ok), 3),
            "clips_below_min_speech": len(cut_ratios) - len(kept_ratios),
        },
        "speech_ratio_histogram": {"edges": SPEECH_HIST_EDGES, "counts": hist.tolist()},
        # Every narrated clip cut, before --min-speech-ratio: what the filter saw (the speech
        # histograms count clips with narration only).
        "speech_ratio_histogram_cut": {"edges": SPEECH_HIST_EDGES, "counts": hist_cut.tolist()},
        "labels": {**opts.vocabulary.to_json(), "clips_with_labels": sum(r["labelled"] for r in ok)},
        # Pixel de-identification: how each scan's kept region was found, and its share of the frame.
        "mask": {"method": opts.mask, "kept_share": _summary([r["mask_kept_share"] for r in ok])},
        # Which scan (manifest line, salted hash) and which of its files failed, and why; never a path.
        "errors": [
            {"manifest_line": r["line"], "scan": r["scan"], **r["error"]} for r in records if "error" in r
        ],
    }
