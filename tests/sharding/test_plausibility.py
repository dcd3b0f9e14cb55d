"""Inputs that lie: a video shorter than its narration or its own header, broken time bases,
gaps between frames and overlong scans fail their scan with a reason, and the build goes on."""

from __future__ import annotations

import pytest

from sharding.__main__ import main as shard_main
from tests.sharding.scankit import (
    build_args,
    moving_frames,
    tone,
    write_audio,
    write_manifest,
    write_timed_video,
    write_video,
)
from usvs_dist.data import schema

FLAGS = "--fps 8 --size 32 --clip-seconds 1 --split 1,0,0 --no-progress"


def _build(
    tmp_path, salt_file, capsys, video: str, audio: str = "", flags: str = ""
) -> tuple[int, dict, str]:
    """Shard one bad row beside a good one; (exit status, the bad row's error, stderr)."""
    write_video(tmp_path / "good.mp4", moving_frames(16, 32, 32, seed=9), 8.0)
    rows = [
        {"scan_id": "bad", "patient_id": "p", "video": video, "audio": audio},
        {"scan_id": "good", "patient_id": "q", "video": "good.mp4"},
    ]
    out = tmp_path / "out"
    status = shard_main(
        build_args(write_manifest(tmp_path / "m.csv", rows), out, salt_file, f"{FLAGS} {flags}")
    )
    index = schema.read_index(out)
    assert index["totals"]["scans"] == 1 and index["totals"]["clips"] == 2  # the good scan goes on
    (error,) = index["errors"]
    assert error["manifest_line"] == 2
    return status, error, capsys.readouterr().err


def test_a_video_cut_short_beside_a_whole_narration_fails(tmp_path, salt_file, capsys):
    write_video(tmp_path / "short.mp4", moving_frames(32, 32, 32), 8.0)  # 4 s
    write_audio(tmp_path / "whole.wav", tone(8.0, 16000), 16000)  # 8 s
    status, error, err = _build(tmp_path, salt_file, capsys, "short.mp4", "whole.wav")
    assert status == 1 and error["file"] == "audio"
    assert error["reason"] == "the narration lasts 8.0 s and the video 4.0 s (more than max(1 s, 5 %) apart)"
    assert "manifest line 2 (audio file): the narration lasts 8.0 s" in err


def test_a_video_whose_data_ends_before_its_declared_duration_fails(tmp_path, salt_file, capsys):
    # Matroska states the duration in its header; cutting the file's tail keeps the claim.
    write_video(tmp_path / "whole.mkv", moving_frames(80, 32, 32), 8.0, container_format="matroska")
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    status, error, _ = _build(tmp_path, salt_file, capsys, "cut.mkv")
    assert status == 1 and error["file"] == "video"
    assert "the file declares 10.0 s (truncated or damaged" in error["reason"]


def test_a_frame_rate_below_one_frame_a_second_fails(tmp_path, salt_file, capsys):
    write_timed_video(tmp_path / "slow.mp4", moving_frames(6, 32, 32), [1.5 * k for k in range(6)])
    status, error, _ = _build(tmp_path, salt_file, capsys, "slow.mp4")
    assert status == 1 and "is 0.667 fps, outside 1-240 fps (a broken time base?)" in error["reason"]


@pytest.mark.parametrize("gap", [600.0, 1e7])
def test_a_gap_between_frames_fails_before_it_is_filled(tmp_path, salt_file, capsys, gap):
    times = [k / 10 for k in range(20)] + [1.9 + gap]
    write_timed_video(tmp_path / "gap.mkv", moving_frames(21, 32, 32), times, container_format="matroska")
    status, error, _ = _build(tmp_path, salt_file, capsys, "gap.mkv")
    assert status == 1 and error["file"] == "video"
    assert (
        f"frame timestamps jump by {gap:.1f} s after frame 19 (more than --max-gap-seconds 2)"
        == error["reason"]
    )


def test_gap_and_length_caps_are_options(tmp_path, salt_file, capsys):
    times = [k / 10 for k in range(20)] + [4.9 + k / 10 for k in range(20)]  # a 3 s gap
    write_timed_video(tmp_path / "gap.mkv", moving_frames(40, 32, 32), times, container_format="matroska")
    status, error, _ = _build(tmp_path, salt_file, capsys, "gap.mkv", flags="--max-scan-seconds 3")
    assert status == 1 and "frame timestamps jump by 3.0 s" in error["reason"]
    status, error, _ = _build(
        tmp_path, salt_file, capsys, "gap.mkv", flags="--overwrite --max-gap-seconds 3.5 --max-scan-seconds 4"
    )
    assert status == 1 and error["reason"] == "the video runs past --max-scan-seconds 4"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ("--max-gap-seconds 0", "must satisfy 0 < gap <= scan"),
        ("--max-gap-seconds 10 --max-scan-seconds 5", "must satisfy 0 < gap <= scan"),
    ],
)
def test_bad_caps_are_refused_before_anything_is_written(tmp_path, salt_file, capsys, flags, words):
    write_video(tmp_path / "v.mp4", moving_frames(8, 32, 32), 8.0)
    manifest = write_manifest(tmp_path / "m.csv", [{"scan_id": "a", "patient_id": "p", "video": "v.mp4"}])
    assert shard_main(build_args(manifest, tmp_path / "out", salt_file, flags)) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "out").exists()
