"""Scans without narration and a data set's own label vocabulary, from manifest to index.json."""

from __future__ import annotations

import io
import json
import re
import tarfile

import av
import numpy as np
import pytest

from sharding.__main__ import main as shard_main
from sharding.vocabulary import VocabularyError, read_vocabulary
from tests.conftest import LUNG_CLASSES
from tests.sharding.scankit import build_args, moving_frames, tone, write_manifest, write_video
from usvs_dist.data import schema

FPS = 8.0
SECONDS = 4.0


def _samples(folder) -> list[tuple[dict, bytes]]:
    """(json, mp4) of every clip in every shard of a folder, in index order."""
    out = []
    for entry in schema.read_index(folder)["shards"]:
        with tarfile.open(folder / entry["name"]) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in files if n.endswith(".json")):
            out.append((json.loads(files[name]), files[name[: -len("json")] + "mp4"]))
    return out


def _audio_streams(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return len(container.streams.audio)


def test_video_only_and_narrated_scans_shard_side_by_side(mixed_shards):
    index = schema.read_index(mixed_shards)
    totals = index["totals"]
    samples = _samples(mixed_shards)
    narrated = [meta for meta, _ in samples if meta[schema.META_NARRATION]]
    silent = [(meta, mp4) for meta, mp4 in samples if not meta[schema.META_NARRATION]]
    # 6 scans of 12 s in 2 s clips, the last 2 scans video-only.
    assert totals["clips"] == 36 and totals["scans_without_narration"] == 2
    assert totals["clips_with_narration"] == len(narrated) == 24
    assert totals["clips_without_narration"] == len(silent) == 12
    assert sum(s["narrated_clips"] for s in index["shards"]) == 24
    assert index["splits"]["train"]["clips_with_narration"] == 24
    assert sum(index["speech_ratio_histogram"]["counts"]) == 24  # over narrated clips only
    # A video-only clip has no audio stream and claims no speech measure: nothing is invented.
    for meta, mp4 in silent:
        assert _audio_streams(mp4) == 0
        assert schema.META_SPEECH_RATIO not in meta and schema.META_LOUDNESS not in meta
    assert all(schema.META_SPEECH_RATIO in meta for meta in narrated)
    assert {len(meta[schema.META_LABELS]) for meta, _ in samples} == {16}


def test_a_vocabulary_with_coarse_groups_is_written_to_the_index(mixed_shards):
    index = schema.read_index(mixed_shards)
    vocabulary = schema.label_vocabulary(index)
    assert vocabulary.classes == LUNG_CLASSES
    assert vocabulary.coarse == ("infection", "healthy") and vocabulary.coarse_of == (0, 0, 1, 0)
    assert vocabulary.background is None
    labels = [c for meta, _ in _samples(mixed_shards) for c in meta[schema.META_LABELS]]
    assert set(labels) <= set(range(4)) and len(set(labels)) == 4


def test_min_speech_ratio_leaves_video_only_clips_in(tmp_path, salt_file):
    n = round(SECONDS * FPS)
    write_video(
        tmp_path / "loud.mp4", moving_frames(n, 48, 64), FPS, audio_N=tone(SECONDS, 16000), audio_rate=16000
    )
    write_video(tmp_path / "silent.mp4", moving_frames(n, 48, 64, seed=1), FPS)
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"scan_id": "a", "patient_id": "p", "video": "loud.mp4"},
            {"scan_id": "b", "patient_id": "q", "video": "silent.mp4"},
        ],
    )
    out = tmp_path / "out"
    flags = "--fps 8 --size 32 --clip-seconds 1 --split 1,0,0 --no-progress --min-speech-ratio 0.5"
    assert shard_main(build_args(manifest, out, salt_file, flags)) == 0
    totals = schema.read_index(out)["totals"]
    assert totals["clips_with_narration"] == 4 and totals["clips_without_narration"] == 4


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("covid\n# a comment\n\nregular\n", ".txt", ("covid", "regular")),
        ("classes: [a, b, c]\nbackground: c\n", ".yaml", ("a", "b", "c")),
    ],
)
def test_vocabulary_files_in_both_forms(tmp_path, text, suffix, expected):
    path = tmp_path / f"classes{suffix}"
    path.write_text(text)
    vocabulary = read_vocabulary(path)
    assert vocabulary.classes == expected and not vocabulary.coarse_of


@pytest.mark.parametrize(
    ("text", "suffix", "words"),
    [
        ("covid\nregular\ncovid\n", ".txt", "the class on line 3 repeats the class on line 1"),
        ("classes: [a, b, a]\n", ".yml", "classes[2] repeats classes[0]"),
        ("classes: [a, b]\ncoarse: {x: [a]}\n", ".yaml", "classes[1] is in no coarse group"),
        ("classes: [a, b]\ncoarse: {x: [a, b], y: [b]}\n", ".yaml", "classes[1] is in coarse groups 1 and 2"),
        ("classes: [a, b]\ncoarse: {x: [a, b, z]}\n", ".yaml", "lists a class that is not in `classes`"),
        ("classes: [a]\nbakground: a\n", ".yaml", "unknown key(s) bakground"),
        ("classes: [a\n", ".yaml", "not valid YAML"),
        ("\n# nothing\n", ".txt", "no class in the file"),
    ],
)
def test_a_bad_vocabulary_file_is_a_clear_error_and_writes_nothing(
    tmp_path, salt_file, capsys, text, suffix, words
):
    path = tmp_path / f"classes{suffix}"
    path.write_text(text)
    with pytest.raises(VocabularyError, match=re.escape(words)):
        read_vocabulary(path)
    write_video(tmp_path / "v.mp4", moving_frames(8, 32, 32), FPS)
    manifest = write_manifest(tmp_path / "m.csv", [{"scan_id": "a", "patient_id": "p", "video": "v.mp4"}])
    out = tmp_path / "out"
    args = build_args(manifest, out, salt_file, f"--labels-vocabulary {path} --no-progress")
    assert shard_main(args) == 2
    assert "--labels-vocabulary" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_labels_outside_the_vocabulary_fail_the_scan_by_row_and_column_not_value(tmp_path, salt_file, capsys):
    n = round(SECONDS * FPS)
    write_video(tmp_path / "v.mp4", moving_frames(n, 48, 64), FPS)
    (tmp_path / "classes.txt").write_text("\n".join(LUNG_CLASSES) + "\n")
    marker = "PATIENT-MARKER-7c1e"
    rows = [f"{k},{'regular' if k != 5 else marker}" for k in range(n)]
    (tmp_path / "bad.csv").write_text("\n".join(["frame,label", *rows]) + "\n")
    (tmp_path / "scan.csv").write_text("label\nviral_pneumonia\n")
    (tmp_path / "fetal.csv").write_text("\n".join(["frame,plane", *[f"{k},4ch" for k in range(n)]]) + "\n")
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"scan_id": "bad", "patient_id": "p", "video": "v.mp4", "labels": "bad.csv"},
            {"scan_id": "whole", "patient_id": "q", "video": "v.mp4", "labels": "scan.csv"},
            {"scan_id": "fetal", "patient_id": "r", "video": "v.mp4", "labels": "fetal.csv"},
        ],
    )
    out = tmp_path / "out"
    flags = f"--labels-vocabulary {tmp_path / 'classes.txt'} --fps 8 --size 32 --split 1,0,0 --no-progress"
    assert shard_main(build_args(manifest, out, salt_file, flags)) == 1
    err = capsys.readouterr().err
    index = schema.read_index(out)
    errors = {e["manifest_line"]: e for e in index["errors"]}
    assert set(errors) == {2, 4}
    assert (
        errors[2]["file"] == "labels" and "row 7: the class is not in the vocabulary" in errors[2]["reason"]
    )
    assert "4 classes" in errors[4]["reason"]  # a fetal plane name is not a lung class
    assert marker not in json.dumps(index) and marker not in err
    # The scan labelled as a whole: every frame of every clip is its class.
    labels = {c for meta, _ in _samples(out) for c in meta[schema.META_LABELS]}
    assert labels == {LUNG_CLASSES.index("viral_pneumonia")}
    assert index["labels"]["vocabulary"] == list(LUNG_CLASSES) and "coarse" not in index["labels"]


def test_the_default_vocabulary_is_the_fetal_planes_with_anatomies(phantom_shards):
    index = schema.read_index(phantom_shards)
    assert schema.label_vocabulary(index) == schema.FETAL_PLANES
    # Indices written before custom vocabularies existed read as the fetal planes too.
    old = {**index, "labels": {"vocabulary": list(schema.PLANES), "clips_with_labels": 3}}
    assert schema.label_vocabulary(old) == schema.FETAL_PLANES
    assert np.array_equal(schema.FETAL_PLANES.coarse_of, schema.PLANE_ANATOMY)


def test_no_narration_stores_no_audio_even_from_a_video_with_a_sound_track(tmp_path, salt_file):
    n = round(SECONDS * FPS)
    write_video(
        tmp_path / "talking.mp4",
        moving_frames(n, 48, 64),
        FPS,
        audio_N=tone(SECONDS, 16000),
        audio_rate=16000,
    )
    manifest = write_manifest(
        tmp_path / "m.csv", [{"scan_id": "a", "patient_id": "p", "video": "talking.mp4"}]
    )
    flags = "--fps 8 --size 32 --clip-seconds 1 --split 1,0,0 --no-progress"
    for extra, narrated in (("", 4), ("--no-narration", 0)):
        out = tmp_path / f"out{extra}"
        assert shard_main(build_args(manifest, out, salt_file, f"{flags} {extra}")) == 0
        assert schema.read_index(out)["totals"]["clips_with_narration"] == narrated
        streams = [_audio_streams(mp4) for _, mp4 in _samples(out)]
        assert streams == [1 if narrated else 0] * 4
