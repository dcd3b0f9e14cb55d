"""Shard files and the build journal: atomic shard writes and what a resumed build may keep.

A shard is written under a hidden temp name and renamed once complete; only then is it hashed
and appended to the journal with the point of the manifest it reaches. An interrupted build
keeps, per split, the journal's shards whose files still hash the same, and continues from the
last of them. index.json replaces the journal when the build finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from sharding.cut import Clip
from usvs_format import schema

JOURNAL_NAME = ".build-journal.jsonl"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write a text file under a temp name and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Journal:
    """Append-only JSON lines: a header, then scan records and finished shards as they happen."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    @classmethod
    def create(cls, path: Path, header: dict, entries: list[dict]) -> Journal:
        """A journal holding `header` and `entries`, replacing any older one atomically."""
        write_atomic(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in [header, *entries]))
        return cls(path)

    @staticmethod
    def read(path: Path) -> tuple[dict | None, list[dict]]:
        """(header, entries); a torn last line (the build died while writing it) is ignored."""
        if not path.is_file():
            return None, []
        lines = path.read_text().splitlines()
        entries = []
        for n, line in enumerate(lines):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if n != len(lines) - 1:
                    raise ValueError(f"build journal {path} is damaged at line {n + 1}") from None
        return (entries[0] if entries else None), entries[1:]

    def append(self, entry: dict) -> None:
        """Add one entry and push it to disk before the build goes on."""
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (the journal stays until index.json replaces it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class SplitShards:
    """Writes one split's shards in order, `maxcount` clips each, starting at shard `next_index`."""

    out: Path
    split: str
    maxcount: int
    journal: Journal
    next_index: int = 0
    finished: list[dict] = field(default_factory=list)
    _tar: wds.TarWriter | None = None
    _tmp: Path | None = None
    _clips: int = 0
    _narrated: int = 0
    _seconds: float = 0.0
    _through: list[int] = field(default_factory=list)

    def write(self, clip: Clip, seconds: float, position: int, written: int) -> None:
        """Add a clip; `written` clips of the scan at manifest `position` are then in shards."""
        if self._tar is None:
            self._tmp = self.out / f".{schema.shard_name(self.split, self.next_index)}.tmp"
            # mtime fixed so the same input gives the same bytes (and checksums) on every rerun.
            self._tar = wds.TarWriter(str(self._tmp), mtime=0.0)
        self._tar.write(
            {
                "__key__": clip.key,
                schema.VIDEO_KEY: clip.mp4,
                schema.META_KEY: json.dumps(clip.meta, sort_keys=True).encode(),
            }
        )
        self._clips += 1
        self._narrated += schema.narrated(clip.meta)
        self._seconds += seconds
        if self._clips == self.maxcount:
            self._finish(position, written)
        else:
            self._through = [position, written]

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._tar is not None:
            self._finish(*self._through)

    def abort(self) -> None:
        """Drop the open shard: close it and delete its temp file (complete shards stay)."""
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:
                pass  # the disk may still be full; the file goes anyway
            self._tar = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _finish(self, position: int, written: int) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        self._tar = None
        with self._tmp.open("rb") as f:
            os.fsync(f.fileno())
        final = self.out / schema.shard_name(self.split, self.next_index)
        os.replace(self._tmp, final)
        entry = {
            "name": final.name,
            "split": self.split,
            "clips": self._clips,
            # The loader of a recipe that reads the narration plans its epochs on these alone.
            "narrated_clips": self._narrated,
            "seconds": round(self._seconds, 3),
            "bytes": final.stat().st_size,
            "sha256": sha256_file(final),
            "through": [position, written],
        }
        self.journal.append({"shard": entry})
        self.finished.append(entry)
        self.next_index += 1
        self._clips, self._narrated, self._seconds, self._tmp = 0, 0, 0.0, None


@dataclass
class Resumed:
    """What an interrupted build left that a rerun keeps."""

    shards: dict[str, list[dict]]
    """Per split, the verified complete shards in order."""
    records: dict[int, dict]
    """Scan records by manifest position, as last journaled."""

    def through(self, split: str) -> tuple[int, int] | None:
        """(manifest position, clips of that scan) the split's kept shards reach, or None."""
        kept = self.shards.get(split)
        return tuple(kept[-1]["through"]) if kept else None  # type: ignore[return-value]


def verify_journal(out: Path, entries: list[dict]) -> Resumed:
    """Keep, per split, the longest run of journaled shards whose files hash as journaled."""
    records: dict[int, dict] = {}
    by_split: dict[str, list[dict]] = {s: [] for s in schema.SPLITS}
    for entry in entries:
        if "scan" in entry:
            records[entry["scan"]] = entry["record"]
        elif "shard" in entry:
            shard = entry["shard"]
            by_split[shard["split"]].append(shard)
    kept: dict[str, list[dict]] = {}
    for split, shards in by_split.items():
        kept[split] = []
        for k, shard in enumerate(shards):
            path = out / shard["name"]
            if shard["name"] != schema.shard_name(split, k) or not path.is_file():
                break
            if sha256_file(path) != shard["sha256"]:
                break
            kept[split].append(shard)
    return Resumed(kept, records)
