"""Reading and checking the raw-scan manifest: a CSV with the header in COLUMNS, one row a scan.

`video` is any file FFmpeg reads or a DICOM cine loop; `audio` is empty when the narration is a
stream of the video (or there is none), else a separate file; `labels` (optional) is a CSV
`frame,plane` (or `frame,label`), or `label` with one row for the whole scan; `gaze` (optional)
a CSV `frame,x,y` in [0, 1]. Paths are relative to the manifest. README.md, "Sharding your own
scans", is the user's guide to it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("scan_id", "patient_id", "video", "audio", "labels", "gaze")
REQUIRED = ("scan_id", "patient_id", "video")


class ManifestError(ValueError):
    """The manifest itself is unusable (missing file or column, an empty required field)."""


@dataclass(frozen=True)
class ScanRow:
    """One scan of the manifest; paths resolved against the manifest's folder."""

    row: int
    scan_id: str
    patient_id: str
    video: Path
    audio: Path | None
    labels: Path | None
    gaze: Path | None


def read_manifest(path: Path) -> list[ScanRow]:
    """Parse the manifest CSV; raises ManifestError naming the file, column or row.

    Duplicate scan ids are not refused here: the build skips and reports the later rows.
    """
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist (expected a CSV with columns {', '.join(COLUMNS)})"
        )
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks column(s) {', '.join(missing)} (expected header: {','.join(COLUMNS)})"
            )
        rows: list[ScanRow] = []
        for raw in reader:
            # The file line the record ends on: blank lines are skipped and a quoted cell can
            # span lines, so counting records would name the wrong line.
            n = reader.line_num
            rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            for col in REQUIRED:
                if not rec[col]:
                    raise ManifestError(f"manifest {path} line {n}: column {col} is empty")
            optional = {c: (path.parent / rec[c]) if rec[c] else None for c in ("audio", "labels", "gaze")}
            rows.append(ScanRow(n, rec["scan_id"], rec["patient_id"], path.parent / rec["video"], **optional))
    if not rows:
        raise ManifestError(f"manifest {path} has a header but no scans")
    return rows
