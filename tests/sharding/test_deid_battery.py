"""De-identification battery: marker strings in every place an identifier can come from, and the
check that none reaches a shard byte, index.json, a log line, or an MLflow param or artifact.

Elsewhere in the battery: DICOM attribute values (test_dicom.py, the marker test), burned-in text
pixels (test_mask.py, blank in decoded clips), the salt and ids (test_deid.py), config secrets in
MLflow (tests/config/test_redact.py).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import pytest

from sharding.__main__ import main as shard_main
from sharding.media import read_audio
from sharding.phantom import synthesize
from tests.sharding.scankit import build_args, moving_frames, retag, write_audio, write_video

MARKERS = ("MARKERSCAN", "MARKERPATIENT", "MARKERPATH", "MARKERFILE", "MARKERTAG", "MARKERCELL")
TAGS = {
    "title": "MARKERTAG title",
    "comment": "MARKERTAG",
    "artist": "MARKERTAG",
    "handler_name": "MARKERTAG",
}


def _assert_nowhere(texts: list[str], folders: list[Path], salt: bytes) -> None:
    """No marker (nor the salt) in any text or any byte of any file below the folders."""
    for text in texts:
        for marker in MARKERS:
            assert marker not in text, f"{marker} in output text: {text[:300]}"
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for marker in (*(m.encode() for m in MARKERS), salt, b"Lavf"):
                    assert marker not in data, f"{marker!r} in {path.name}"


def _marked_raw(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Phantom scans re-filed under marker paths, with marker tags, ids and patient ids."""
    raw = tmp_path / "raw_MARKERPATH"
    manifest = synthesize(raw, scans=3, seconds=4.0, seed=0, log=lambda *_: None)
    rows = list(csv.DictReader(manifest.open()))
    marked = raw / "MARKERPATH"
    marked.mkdir()
    # The first scan's narration as a separate, tagged file under a marker path.
    write_audio(marked / "MARKERFILE_narration.m4a", read_audio(raw / rows[0]["video"], 16000), 16000, TAGS)
    out = []
    for i, r in enumerate(rows):
        video = Path(r["video"])
        retag(raw / video, marked / f"MARKERFILE_{video.name}", TAGS)
        for column in ("labels", "gaze"):
            shutil.copy(raw / r[column], marked / f"MARKERFILE_{r[column]}")
        out.append(
            {
                "scan_id": f"MARKERSCAN{i}",
                "patient_id": f"MARKERPATIENT{i}",
                **{c: f"MARKERPATH/MARKERFILE_{r[c]}" for c in ("video", "labels", "gaze")},
                "audio": "MARKERPATH/MARKERFILE_narration.m4a" if i == 0 else "",
            }
        )
    with av.open(str(marked / f"MARKERFILE_{Path(rows[0]['video']).name}")) as c:
        assert c.metadata["title"] == "MARKERTAG title"  # the tags are there to be dropped
    return raw, out


def _write(manifest: Path, rows: list[dict]) -> Path:
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["scan_id", "patient_id", "video", "audio", "labels", "gaze"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def test_markers_in_every_manifest_field_and_container_tag_reach_no_output(tmp_path, salt_file, capfd):
    raw, rows = _marked_raw(tmp_path)
    (raw / "MARKERPATH" / "MARKERFILE_broken.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"MARKERTAG" * 50)
    # Narration files that fail: missing, and one without sound (a video named as audio).
    rows.append({**rows[1], "scan_id": "MARKERSCAN-noaudio", "audio": "MARKERPATH/MARKERFILE_missing.wav"})
    write_video(raw / "MARKERPATH" / "MARKERFILE_silent.mp4", moving_frames(8, 32, 32), 8.0, metadata=TAGS)
    rows.append({**rows[1], "scan_id": "MARKERSCAN-silent", "audio": "MARKERPATH/MARKERFILE_silent.mp4"})
    rows.append(
        {
            "scan_id": "MARKERSCANX",
            "patient_id": "MARKERPATIENTX",
            "video": "MARKERPATH/MARKERFILE_broken.mp4",
        }
    )
    manifest = _write(raw / "manifest.csv", rows)
    out = tmp_path / "shards"
    assert shard_main(build_args(manifest, out, salt_file, "--no-progress")) == 1
    assert shard_main(["inspect", str(out), "--verify"]) == 0
    captured = capfd.readouterr()
    index = json.loads((out / "index.json").read_text())
    assert index["totals"]["scans"] == 3 and index["totals"]["failed_scans"] == 3
    assert index["totals"]["clips_with_narration"] == 6  # the first scan's from its tagged m4a
    _assert_nowhere([captured.out, captured.err], [out], salt_file.read_bytes())


def test_labels_and_gaze_files_that_fail_are_named_by_line_and_column_never_quoted(
    tmp_path, salt_file, capfd
):
    raw, rows = _marked_raw(tmp_path)
    marked = raw / "MARKERPATH"
    # A patient table put in the labels column; cells with identifiers; a system-like file;
    # bytes that are no text; gaze cells with identifiers; a path to nothing.
    (marked / "MARKERFILE_patients.csv").write_text(
        "MARKERCELL name,MARKERCELL MRN,MARKERCELL birth\nx,y,z\n"
    )
    (marked / "MARKERFILE_cells.csv").write_text("frame,plane\n0,MARKERCELL-Smith\n")
    # A frame cell that looks like a digit to str.isdigit() but is none to int().
    (marked / "MARKERFILE_digits.csv").write_text("frame,plane\n\u00b9MARKERCELL,4ch\n")
    (marked / "MARKERFILE_passwd").write_text("root:x:0:0:MARKERCELL:/root:/bin/bash\n")
    (marked / "MARKERFILE_binary.csv").write_bytes(b"\xff\xfeMARKERCELL\x00" * 20)
    (marked / "MARKERFILE_gaze.csv").write_text(
        "frame,x,y\n" + "".join(f"{k},MARKERCELL,0.5\n" for k in range(60))
    )
    bad = {
        "labels": ["patients.csv", "cells.csv", "digits.csv", "passwd", "binary.csv", "missing.csv"],
        "gaze": ["gaze.csv", "patients.csv"],
    }
    for column, files in bad.items():
        for name in files:
            rows.append(
                {**rows[0], "scan_id": f"MARKERSCAN-{column}-{name}", column: f"MARKERPATH/MARKERFILE_{name}"}
            )
    manifest = _write(raw / "manifest.csv", rows)
    out = tmp_path / "shards"
    assert shard_main(build_args(manifest, out, salt_file, "--no-progress")) == 1
    captured = capfd.readouterr()
    index = json.loads((out / "index.json").read_text())
    errors = index["errors"]
    assert len(errors) == 8 and {e["file"] for e in errors} == {"labels", "gaze"}
    assert all(f"manifest line {e['manifest_line']} ({e['file']} file)" in captured.err for e in errors)
    _assert_nowhere([captured.out, captured.err], [out], salt_file.read_bytes())


@pytest.mark.slow
def test_a_run_on_marked_scans_logs_no_marker_to_mlflow(tmp_path, salt_file):
    from mlflow.tracking import MlflowClient

    from tests.train.runner import train

    raw, rows = _marked_raw(tmp_path)
    out = tmp_path / "shards"
    assert (
        shard_main(
            build_args(_write(raw / "manifest.csv", rows), out, salt_file, "--no-progress --split 1,0,0")
        )
        == 0
    )
    run = train(tmp_path, out, "train.steps=2", "train.checkpoint_every=2", "train.num_workers=1")
    client: MlflowClient = run.client
    data = client.get_run(run.run_id).data
    texts = [json.dumps(data.params), json.dumps(data.tags), json.dumps(sorted(data.metrics)), run.output]
    downloaded = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "artifacts")))
    assert any(downloaded.rglob("resolved.yaml")) and any(downloaded.rglob("encoders.pt"))
    _assert_nowhere(texts, [downloaded, out], salt_file.read_bytes())
