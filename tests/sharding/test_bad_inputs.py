"""Each kind of bad scan is skipped and reported (index.json: line, file, reason; stderr: the path),
every other scan is sharded, the exit status says so, and nothing partial is left behind."""

from __future__ import annotations

import json
import wave

import numpy as np

from sharding.__main__ import main as shard_main
from tests.sharding.scankit import (
    assert_rows_reported,
    build_args,
    moving_frames,
    tone,
    write_audio,
    write_manifest,
    write_video,
)
from usvs_dist.data import schema

SECONDS, FPS = 2.5, 10.0


def _good(folder, name, **kw):
    return write_video(
        folder / name,
        moving_frames(round(SECONDS * FPS), 48, 64),
        FPS,
        audio_N=tone(SECONDS, 16000),
        audio_rate=16000,
        **kw,
    )


def _table(path, header, rows):
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path.name


def test_every_kind_of_bad_scan_is_skipped_and_reported(tmp_path, salt_file, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    n = round(SECONDS * FPS)
    good = _good(raw, "good.mp4").name
    data = (raw / good).read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (raw / "corrupt.mp4").write_bytes(
        b"\x00\x00\x00\x18ftypmp42" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    )
    write_audio(raw / "only_audio.m4a", tone(SECONDS, 16000), 16000)
    write_video(raw / "silent.mp4", moving_frames(n, 48, 64), FPS)
    write_video(
        raw / "zero.mkv", np.zeros((0, 48, 64), np.uint8), FPS, audio_N=tone(1.0, 16000), audio_rate=16000
    )
    with wave.open(str(raw / "empty.wav"), "wb") as w:  # a valid wav header and no samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    (raw / "a_folder.mp4").mkdir()
    planes = [schema.PLANES[0]] * n
    cases = {
        # scan_id: (manifest fields, expected file column, words of the reason)
        "missing": ({"video": "nope.mp4"}, "video", "does not exist"),
        "folder": ({"video": "a_folder.mp4"}, "video", "not a regular file"),
        "truncated": ({"video": "truncated.mp4"}, "video", "cannot open video"),
        "corrupt": ({"video": "corrupt.mp4"}, "video", "cannot open video"),
        "no video stream": ({"video": "only_audio.m4a"}, "video", "no video stream"),
        # No narration at all is a video-only scan, not an error; a named audio file without
        # sound is.
        "no audio": ({"video": "silent.mp4"}, None, None),
        "audio file without sound": (
            {"video": "silent.mp4", "audio": "silent.mp4"},
            "audio",
            "no audio stream",
        ),
        "missing narration": ({"video": "silent.mp4", "audio": "nope.wav"}, "audio", "does not exist"),
        "zero duration": ({"video": "zero.mkv"}, "video", "zero duration"),
        "empty narration": ({"video": "silent.mp4", "audio": "empty.wav"}, "audio", "zero duration"),
        "labels short": (
            {"video": good, "labels": _table(raw / "l1.csv", "frame,plane", list(enumerate(planes))[:-3])},
            "labels",
            f"has {n - 3} rows, the video has {n} frames",
        ),
        "labels unknown plane": (
            {
                "video": good,
                "labels": _table(
                    raw / "l2.csv",
                    "frame,plane",
                    [(k, "elbow" if k == 7 else p) for k, p in enumerate(planes)],
                ),
            },
            "labels",
            "row 9: the class is not in the vocabulary",
        ),
        "labels index out of range": (
            {
                "video": good,
                "labels": _table(raw / "l3.csv", "frame,plane", [(k, 99 if k == 2 else 0) for k in range(n)]),
            },
            "labels",
            "row 4: the class is not in the vocabulary",
        ),
        "gaze long": (
            {
                "video": good,
                "gaze": _table(raw / "g1.csv", "frame,x,y", [(k, 0.5, 0.5) for k in range(n + 4)]),
            },
            "gaze",
            f"has {n + 4} rows, the video has {n} frames",
        ),
        "gaze outside": (
            {
                "video": good,
                "gaze": _table(
                    raw / "g2.csv", "frame,x,y", [(k, 1.5 if k == 5 else 0.5, 0.5) for k in range(n)]
                ),
            },
            "gaze",
            "row 7: the point is outside [0, 1]",
        ),
        "gaze text": (
            {
                "video": good,
                "gaze": _table(
                    raw / "g3.csv", "frame,x,y", [(k, "left" if k == 1 else 0.5, 0.5) for k in range(n)]
                ),
            },
            "gaze",
            "row 3: columns x,y are not two numbers",
        ),
        "good": ({"video": good}, None, None),
    }
    rows = [
        {"scan_id": sid, "patient_id": f"p-{k}", **fields}
        for k, (sid, (fields, _, _)) in enumerate(cases.items())
    ]
    rows.append({"scan_id": "good", "patient_id": "p-dup", "video": good})  # a duplicate scan_id
    manifest = write_manifest(raw / "manifest.csv", rows)
    out = tmp_path / "out"
    args = build_args(
        manifest, out, salt_file, "--fps 8 --size 32 --clip-seconds 1 --split 1,0,0 --no-progress"
    )

    assert shard_main(args) == 1
    err = capsys.readouterr().err
    index = json.loads((out / schema.INDEX_NAME).read_text())
    errors = assert_rows_reported(index, err, cases)
    dup_line = len(rows) + 1
    assert errors[dup_line]["file"] == "scan_id" and "first on manifest line" in errors[dup_line]["reason"]
    assert len(errors) == len(cases) - 1  # every bad row, the duplicate, not the two good scans
    totals = index["totals"]
    assert totals["scans"] == 2 and totals["failed_scans"] == len(cases) - 1
    # Each good scan's two whole seconds; the silent one is a video-only scan.
    assert totals["clips"] == 4 and totals["clips_with_narration"] == 2
    assert totals["clips_without_narration"] == 2 and totals["scans_without_narration"] == 1
    assert str(raw) not in json.dumps(index) and "nope" not in json.dumps(index)
    assert str(raw) not in err and "truncated.mp4" not in err  # logs travel: no paths by default
    assert sorted(p.name for p in out.iterdir()) == [schema.INDEX_NAME, "train-000000.tar", "train.wids.json"]

    assert shard_main(["inspect", str(out)]) == 0  # failed scans do not make the shards bad
    shown = capsys.readouterr().out
    assert f"failed scan: manifest line {dup_line} (scan_id file): duplicate scan_id" in shown
    assert shown.count("failed scan:") == len(cases) - 1

    assert shard_main([*args, "--overwrite", "--allow-failures", "--log-paths"]) == 0
    err = capsys.readouterr().err
    assert f"(video file {raw / 'truncated.mp4'})" in err and f"(labels file {raw / 'l1.csv'})" in err


def test_a_scan_shorter_than_a_clip_is_counted_not_failed(tmp_path, salt_file):
    from sharding.build import BuildOptions, build

    _good(tmp_path, "short.mp4")
    manifest = write_manifest(tmp_path / "m.csv", [{"scan_id": "a", "patient_id": "p", "video": "short.mp4"}])
    index = build(
        manifest, tmp_path / "out", salt_file, BuildOptions(clip_seconds=6.0, size=32), log=lambda *_: None
    )
    assert index["errors"] == [] and index["totals"]["clips"] == 0
    assert index["totals"]["scans_shorter_than_a_clip"] == 1
    assert index["totals"]["tail_seconds_dropped"] == SECONDS
