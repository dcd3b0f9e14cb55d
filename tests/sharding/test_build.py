"""synth -> build -> shards: counts, alignment, patient splits, de-identification, bad input."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import decord
import numpy as np
import torch
import torchaudio

from sharding.__main__ import main as shard_main
from sharding.build import BuildOptions, build
from sharding.phantom import burned_in_text, make_spec, render_narration, render_video, synthesize
from sharding.writer import sha256_file
from tests.conftest import PHANTOM
from usvs_dist.data import schema

RAW_FPS, RAW_SIZE, RAW_RATE = 15.0, 128, 22050


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a shard."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def all_clips(folder: Path) -> list[tuple[str, dict, bytes]]:
    index = json.loads((folder / schema.INDEX_NAME).read_text())
    out = []
    for shard in index["shards"]:
        for sample in read_tar(folder / shard["name"]).values():
            out.append((shard["split"], json.loads(sample["json"]), sample["mp4"]))
    return out


def test_counts_and_checksums_match_the_index(phantom_shards):
    index = json.loads((phantom_shards / schema.INDEX_NAME).read_text())
    assert index["format_version"] == schema.FORMAT_VERSION
    total = 0
    for shard in index["shards"]:
        samples = read_tar(phantom_shards / shard["name"])
        assert len(samples) == shard["clips"]
        assert all(set(s) == {"mp4", "json"} for s in samples.values())
        assert sha256_file(phantom_shards / shard["name"]) == shard["sha256"]
        total += shard["clips"]
    # 6 scans of 12 s in 2 s clips.
    assert total == index["totals"]["clips"] == 36
    assert sum(s["clips"] for s in index["splits"].values()) == total
    assert sum(index["speech_ratio_histogram"]["counts"]) == total
    assert index["labels"]["clips_with_labels"] == total
    assert len({s["clips"] for s in index["shards"]}) > 1  # uneven shards, as real data has
    assert not list(phantom_shards.glob(".*"))


def test_patients_never_span_two_splits(phantom_shards):
    index = json.loads((phantom_shards / schema.INDEX_NAME).read_text())
    seen: dict[str, str] = {}
    for split, meta, _ in all_clips(phantom_shards):
        assert seen.setdefault(meta["patient"], split) == split
        assert meta["patient"] in index["splits"][split]["patients"]
    assert len(seen) == PHANTOM["scans"] // PHANTOM["scans_per_patient"]


def _clips_of_scan(folder: Path, scan_index: int, manifest: Path, salt: bytes):
    from sharding.deid import hash_id

    scan_id = list(csv.DictReader(manifest.open()))[scan_index]["scan_id"]
    scan_hash = hash_id(salt, "scan", scan_id)
    clips = [(m, mp4) for _, m, mp4 in all_clips(folder) if m["scan"] == scan_hash]
    return sorted(clips, key=lambda c: c[0]["t0"])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def test_clip_audio_is_the_scan_narration_between_t0_and_t1(phantom_shards, phantom_raw):
    from tests.conftest import SALT

    spec = make_spec(PHANTOM["seed"], 1, PHANTOM["seconds"], RAW_FPS, RAW_SIZE, RAW_RATE, 0.8)
    ref = torchaudio.functional.resample(
        torch.from_numpy(render_narration(spec)), RAW_RATE, schema.AUDIO_RATE
    ).numpy()
    pad = 800
    ref = np.pad(ref, (pad, pad))
    n = 2 * schema.AUDIO_RATE
    checked = 0
    for meta, mp4 in _clips_of_scan(phantom_shards, 1, phantom_raw, SALT):
        audio = decord.AudioReader(io.BytesIO(mp4), sample_rate=schema.AUDIO_RATE, mono=True)[:].asnumpy()[0][
            :n
        ]
        assert len(audio) == n
        if meta["speech_ratio"] < 0.3:
            continue
        a0 = round(meta["t0"] * schema.AUDIO_RATE) + pad

        corr = {lag: _correlation(audio, ref[a0 + lag : a0 + lag + n]) for lag in range(-pad, pad + 1, 4)}
        best = max(corr, key=corr.get)
        assert abs(best) <= 16, f"clip at t0={meta['t0']} is {best} samples off"  # within 1 ms
        assert corr[0] > 0.95
        assert corr[pad] < 0.5  # a clip 50 ms off does not match: the check can fail
        checked += 1
    assert checked >= 2


def test_clip_frames_are_the_scan_frames_at_their_times(phantom_shards, phantom_raw):
    from tests.conftest import SALT

    spec = make_spec(PHANTOM["seed"], 2, PHANTOM["seconds"], RAW_FPS, RAW_SIZE, RAW_RATE, 0.8)
    frames, _ = render_video(spec)
    # The burned-in text is the same in every frame and blanked in the clips: compare the sector.
    frames = np.where(burned_in_text(spec) > 0, 0, frames)
    small = torch.nn.functional.interpolate(torch.from_numpy(frames).float()[:, None], size=64, mode="area")[
        :, 0
    ].numpy()
    clips = _clips_of_scan(phantom_shards, 2, phantom_raw, SALT)
    assert len(clips) == 6
    for meta, mp4 in clips[:3]:
        video = decord.VideoReader(io.BytesIO(mp4), num_threads=1)
        assert len(video) == meta["frames"] == 16
        got = video.get_batch([0, 5, 11]).asnumpy()[..., 0].astype(np.float32)
        for g, j in zip(got, [0, 5, 11], strict=True):
            src = round((meta["t0"] + j / 8.0) * RAW_FPS)
            scores = {
                s: np.corrcoef(g.ravel(), small[s].ravel())[0, 1]
                for s in (src - 1, src, src + 1)
                if 0 <= s < len(small)
            }
            assert max(scores, key=scores.get) == src


def test_same_input_same_shards(tmp_path, phantom_raw, salt_file):
    a = build(phantom_raw, tmp_path / "a", salt_file, BuildOptions(), log=lambda *_: None)
    b = build(phantom_raw, tmp_path / "b", salt_file, BuildOptions(), log=lambda *_: None)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_missing_manifest_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert shard_main(["build", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.csv does not exist" in err and err.count("\n") == 1
    assert not out.exists()


def test_manifest_missing_a_column_exits_2_and_writes_nothing(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("scan_id,patient_id,video,labels,gaze\na,b,c.mp4,,\n")
    out = tmp_path / "out"
    assert shard_main(["build", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) audio" in err and "m.csv" in err
    assert not out.exists()


def test_missing_salt_is_an_error(phantom_raw, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("USVS_SHARD_SALT", raising=False)
    assert shard_main(["build", str(phantom_raw), "--out", str(tmp_path / "o")]) == 2
    assert "salt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(phantom_raw, salt_file, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["build", str(phantom_raw), "--out", str(out), "--salt-file", str(salt_file)]
    assert shard_main([*args, "--shard-clips", "2"]) == 0
    many = len(list(out.glob("*.tar")))
    assert shard_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert shard_main([*args, "--overwrite"]) == 0
    assert len(list(out.glob("*.tar"))) < many
    names = {s["name"] for s in json.loads((out / schema.INDEX_NAME).read_text())["shards"]}
    assert {p.name for p in out.glob("*.tar")} == names  # stale shards of the old build are gone


def test_corrupt_scan_is_skipped_and_reported_without_its_path(tmp_path, salt_file, capsys):
    manifest = synthesize(tmp_path / "raw", scans=2, seconds=4.0, seed=0, log=lambda *_: None)
    (tmp_path / "raw" / "scan_0001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    out = tmp_path / "out"
    args = ["build", str(manifest), "--out", str(out), "--salt-file", str(salt_file)]
    assert shard_main(args) == 1
    err = capsys.readouterr().err
    assert "manifest line 3 (video file)" in err and "scan_0001" not in err
    index = json.loads((out / schema.INDEX_NAME).read_text())
    assert index["totals"]["failed_scans"] == 1 and index["totals"]["scans"] == 1
    assert index["errors"][0]["manifest_line"] == 3
    assert "scan_0001" not in json.dumps(index)
    assert shard_main([*args, "--overwrite", "--allow-failures"]) == 0


def test_inspect_verify_catches_a_changed_shard(phantom_raw, salt_file, tmp_path):
    out = tmp_path / "o"
    build(phantom_raw, out, salt_file, BuildOptions(), log=lambda *_: None)
    assert shard_main(["inspect", str(out), "--verify"]) == 0
    shard = sorted(out.glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # inside the first member, not the tar's zero padding
    shard.write_bytes(bytes(data))
    assert shard_main(["inspect", str(out), "--verify"]) == 1


def test_stride_cuts_overlapping_clips(phantom_raw, salt_file, tmp_path):
    opts = BuildOptions(clip_seconds=2.0, stride_seconds=1.0, fps=8.0, size=32, shard_clips=50)
    index = build(phantom_raw, tmp_path, salt_file, opts, log=lambda *_: None)
    # 12 s scans: clips start at 0, 1, ..., 10 s.
    assert index["totals"]["clips"] == PHANTOM["scans"] * 11 and index["stride_seconds"] == 1.0
    starts: dict[str, list[float]] = {}
    for _, meta, _ in all_clips(tmp_path):
        starts.setdefault(meta["scan"], []).append(meta["t0"])
        assert meta["t1"] - meta["t0"] == 2.0
    assert all(sorted(t) == [float(k) for k in range(11)] for t in starts.values())
    assert index["totals"]["tail_seconds_dropped"] == 0.0


def test_min_speech_ratio_drops_quiet_clips_and_reports_them(phantom_raw, salt_file, tmp_path):
    opts = BuildOptions(clip_seconds=2.0, fps=8.0, size=32, shard_clips=50, min_speech_ratio=0.5)
    index = build(phantom_raw, tmp_path, salt_file, opts, log=lambda *_: None)
    kept = all_clips(tmp_path)
    dropped = index["totals"]["clips_below_min_speech"]
    assert dropped > 0 and len(kept) == index["totals"]["clips"] and len(kept) + dropped == 36
    assert all(meta["speech_ratio"] >= 0.5 for _, meta, _ in kept)
    assert sum(index["speech_ratio_histogram"]["counts"]) == len(kept)
    assert sum(index["speech_ratio_histogram_cut"]["counts"]) == 36 and index["min_speech_ratio"] == 0.5


def test_bad_stride_or_speech_ratio_is_refused(phantom_raw, salt_file, tmp_path, capsys):
    for flag, value in (("--stride-seconds", "-1"), ("--min-speech-ratio", "1.5")):
        code = shard_main(
            [
                "build",
                str(phantom_raw),
                "--out",
                str(tmp_path / "o"),
                "--salt-file",
                str(salt_file),
                flag,
                value,
            ]
        )
        assert code == 2 and flag in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_a_rerun_with_more_scans_keeps_earlier_patients_in_their_split(salt_file, tmp_path):
    from tests.sharding.scankit import moving_frames, tone, write_video

    video = write_video(
        tmp_path / "scan.mp4", moving_frames(20, 32, 32), 10.0, audio_N=tone(2.0, 16000), audio_rate=16000
    )
    opts = BuildOptions(clip_seconds=2.0, size=32, split_fractions=(0.5, 0.25, 0.25))

    def splits(n_patients: int, name: str, first: int = 0) -> dict[str, str]:
        manifest = tmp_path / f"{name}.csv"
        with manifest.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scan_id", "patient_id", "video", "audio", "labels", "gaze"])
            for p in reversed(range(first, n_patients)):  # new scans first: order must not matter
                w.writerow([f"scan-{p}", f"patient-{p}", video, "", "", ""])
        index = build(manifest, tmp_path / name, salt_file, opts, log=lambda *_: None)
        return {pat: split for split, info in index["splits"].items() for pat in info["patients"]}

    before, after = splits(8, "before"), splits(16, "after")
    assert len(before) == 8 and len(after) == 16
    assert all(after[p] == s for p, s in before.items())
    assert len(set(after.values())) == 3  # the fractions spread patients over all splits
