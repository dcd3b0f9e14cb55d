"""The sharder and loader on real recordings from ../shared/data (many devices and codecs).

Those files are test data kept outside the repository by design (their licences are their own):
CI has the real recordings beside its clone; without them this module is skipped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import av
import pytest

from sharding.build import BuildOptions, build
from usvs_dist.config import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.pipeline import EpochLoader

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SPEECH = DATA / "speech" / "two_speaker_call_16k.wav"
SCANS = [
    # (video, narration: None when it is a stream of the video, else the format of a separate file)
    ("av/tongue_ultrasound_with_speech.mp4", None),  # H.264 + AAC 48 kHz in one mp4, 60 fps, 720x540
    ("pocus/videos/Reg_pat1Image_132943.mpeg", ".wav"),  # MPEG-2, 25 fps, no audio stream
    ("pocus/videos/Cov_convex_volpecelli_sonographic_v1.mov", ".flac"),  # H.264 .mov, 39 fps
    ("vendors/sonosite-anon-eye1-video.mp4", ".mp3"),  # scanner export, 960x720
    ("vendors/clarius-ocular-short.mp4", ".m4a"),  # scanner export, 1280x960
]

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real recordings) is not present")


def _duration(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.frames / s.average_rate) if s.frames else c.duration / 1e6


def _transcribed_speech(t0: float, t1: float) -> float:
    """Seconds of [t0, t1) that the .stm transcript marks as speech."""
    total = 0.0
    for line in SPEECH.with_suffix(".stm").read_text().splitlines():
        start, end = map(float, line.split()[3:5])
        total += max(0.0, min(t1, end) - max(t0, start))
    return total


def _speech_ratio_follows_the_transcript(out: Path, index: dict) -> None:
    import tarfile

    checked: dict[str, int] = {}
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                if meta[schema.META_SCAN] == index["_tongue_hash"]:
                    continue  # narration of that scan is its own stream, not the transcribed call
                speech = _transcribed_speech(meta["t0"], meta["t1"])
                if speech == 0.0:
                    assert meta["speech_ratio"] < 0.1, meta
                elif speech >= 1.0:
                    assert meta["speech_ratio"] > 0.2, meta
                else:
                    continue
                checked[meta[schema.META_SCAN]] = checked.get(meta[schema.META_SCAN], 0) + 1
    # every separate narration file (wav, flac, mp3, m4a) is checked against the transcript
    assert len(checked) == len(SCANS) - 1 and sum(checked.values()) >= 10, checked


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory, salt_file) -> tuple[Path, dict, BuildOptions]:
    """The real recordings, each with a narration (its own stream, or the real call in another
    format), sharded: (shard folder, index, options)."""
    from sharding.media import read_audio
    from tests.sharding.scankit import write_audio

    tmp_path = tmp_path_factory.mktemp("real")
    speech = read_audio(SPEECH, 16000)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan_id", "patient_id", "video", "audio", "labels", "gaze"])
        for i, (video, audio) in enumerate(SCANS):
            narration = ""
            if audio:
                # The real call, cut to the scan's length (a narration much longer than its video
                # fails the plausibility check) and written in the row's format.
                samples = speech[: round(_duration(DATA / video) * 16000)]
                narration = write_audio(tmp_path / f"call{i}{audio}", samples, 16000)
            w.writerow([f"real-{i}", f"patient-{i}", DATA / video, narration, "", ""])
    out = tmp_path / "shards"
    # The SonoSite export is a frozen loop, which --mask auto refuses (tests/sharding/test_mask.py);
    # this test is about codecs, rates and narration, so it keeps whole frames.
    opts = BuildOptions(clip_seconds=2.0, fps=8.0, size=64, split_fractions=(1.0, 0.0, 0.0), mask="none")
    return out, build(manifest, out, salt_file, opts, log=lambda *_: None), opts


def test_real_scans_shard_and_load(real_shards):
    out, index, opts = real_shards
    index = dict(index)
    assert index["errors"] == []
    from sharding.deid import hash_id
    from tests.conftest import SALT

    index["_tongue_hash"] = hash_id(SALT, "scan", "real-0")
    expected = sum(math.floor(round(_duration(DATA / v) * opts.fps + 1e-6) / 16) for v, _ in SCANS)
    assert index["totals"]["clips"] == expected >= 10
    assert index["splits"]["train"]["scans"] == len(SCANS)
    _speech_ratio_follows_the_transcript(out, index)
    for shard in index["shards"]:
        assert str(DATA).encode() not in (out / shard["name"]).read_bytes()
    assert b"Lavf56" not in json.dumps(index).encode()

    cfg = DataConfig(batch_size=4, loader_workers=0, num_frames=6, frame_size=48)
    batch = next(iter(EpochLoader(cfg, out, rank=0, world_size=1).epoch(0)))
    assert batch["video"].shape == (4, 1, 6, 48, 48)
    assert batch["audio"].shape[:3] == (4, 1, 64)
    assert (batch["labels"] == -1).all()  # no labels in these scans
    assert batch["video"].std() > 0.01  # real pixels, not letterbox only
    assert index["labels"]["clips_with_labels"] == 0


def test_both_decoders_agree_on_the_real_recordings_shards(real_shards):
    """The H.264 the sharder wrote from five devices and codecs: Decord and TorchCodec give the
    same frames (at most 1 grey level apart) and the same log-mel of the narration (1e-3)."""
    from tests.conftest import decoder_or_skip
    from tests.data.shardkit import phantom_samples
    from tests.data.test_backends import MAX_GREY_DIFF, MAX_LOG_MEL_DIFF, agreement

    decoder_or_skip("torchcodec")
    out, index, _ = real_shards
    grey, log_mel, clips = agreement(phantom_samples(out), DataConfig())
    assert clips == index["totals"]["clips"] and grey <= MAX_GREY_DIFF and log_mel <= MAX_LOG_MEL_DIFF
