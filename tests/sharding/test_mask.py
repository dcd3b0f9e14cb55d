"""Pixel de-identification: burned-in text outside the imaging sector is blank in the shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
from scipy import ndimage

from sharding.__main__ import main as shard_main
from sharding.build import BuildOptions, build
from sharding.mask import MaskError, MaskSpec, box_mask, sector_mask
from sharding.phantom import burned_in_text, make_spec, synthesize
from tests.sharding.scankit import build_args, moving_frames, write_manifest, write_video
from usvs_dist.data import schema

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # real recordings, outside the repo by design


def _decoded_frames(folder: Path) -> dict[str, np.ndarray]:
    """scan hash -> every stored frame of its clips [N, H, W] (luma), decoded with PyAV."""
    out: dict[str, list[np.ndarray]] = {}
    for entry in schema.read_index(folder)["shards"]:
        with tarfile.open(folder / entry["name"]) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in files if n.endswith(".mp4")):
            scan = json.loads(files[name[:-3] + "json"])[schema.META_SCAN]
            with av.open(io.BytesIO(files[name])) as c:
                out.setdefault(scan, []).extend(f.to_ndarray(format="gray") for f in c.decode(video=0))
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def texted_raw(tmp_path_factory) -> Path:
    """Two phantom scans of 6 s at 128 px, with the phantom's burned-in text."""
    return synthesize(tmp_path_factory.mktemp("texted"), scans=2, seconds=6.0, seed=5, log=lambda *_: None)


def test_burned_in_text_is_blank_in_the_shards_unless_the_mask_is_off(texted_raw, salt_file, tmp_path):
    # Where the text was drawn at 128 px, on the 64 px stored grid (each stored pixel is 2 x 2).
    text_HW = burned_in_text(make_spec(5, 0, 6.0, 15.0, 128, 22050, 0.8)) > 0
    stored_text = text_HW.reshape(64, 2, 64, 2).any(axis=(1, 3))
    assert stored_text.sum() > 100
    results = {}
    for mask in ("auto", "none"):
        out = tmp_path / mask
        opts = BuildOptions(clip_seconds=2.0, size=64, split_fractions=(1.0, 0.0, 0.0), mask=mask)
        index = build(texted_raw, out, salt_file, opts, log=lambda *_: None)
        assert index["errors"] == [] and index["mask"]["method"] == mask
        results[mask] = (index, _decoded_frames(out))
    index, frames = results["auto"]
    for clip_frames in frames.values():
        assert clip_frames[:, stored_text].max() <= 12  # black, up to the codec's ringing
    assert 0.2 < index["mask"]["kept_share"]["min"] <= index["mask"]["kept_share"]["max"] < 0.6
    # The check can fail: without the mask the text is there, bright.
    index, frames = results["none"]
    assert all(f[:, stored_text].mean() > 60 for f in frames.values())
    assert index["mask"]["kept_share"] == {"min": 1.0, "mean": 1.0, "max": 1.0}


def test_the_sector_mask_keeps_a_still_cyst_inside_the_sector_and_nothing_outside():
    rng = np.random.default_rng(0)
    frames = rng.integers(40, 200, (30, 64, 64)).astype(np.uint8)  # a changing image everywhere...
    frames[:, :, :8] = 0  # ...but a black margin
    frames[:, 2:6, 1:7] = 220  # with static text in it
    frames[:, 30:36, 30:36] = 10  # and a still, dark cyst inside the sector
    keep = sector_mask(frames)
    assert keep[30:36, 30:36].all() and not keep[:, :8].any()
    assert keep[5:59, 10:62].all()  # the sector minus its one-pixel rim


def test_a_still_scan_fails_under_auto_and_shards_with_a_box_or_none(tmp_path, salt_file, capsys):
    still = np.full((16, 48, 64), 90, np.uint8)
    still[:, 2:6, 2:20] = 250  # burned-in text on a frozen frame
    write_video(tmp_path / "still.mp4", still, 8.0)
    write_video(tmp_path / "moving.mp4", moving_frames(16, 48, 64), 8.0)
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"scan_id": "still", "patient_id": "p", "video": "still.mp4"},
            {"scan_id": "moving", "patient_id": "q", "video": "moving.mp4"},
        ],
    )
    flags = "--fps 8 --size 64 --split 1,0,0 --no-progress"
    assert shard_main(build_args(manifest, tmp_path / "auto", salt_file, flags)) == 1
    index = schema.read_index(tmp_path / "auto")
    assert [(e["manifest_line"], e["file"]) for e in index["errors"]] == [(2, "video")]
    assert "no imaging sector found" in index["errors"][0]["reason"]
    assert "manifest line 2 (video file): no imaging sector found" in capsys.readouterr().err

    box = tmp_path / "box"
    assert shard_main(build_args(manifest, box, salt_file, f"{flags} --mask box:32,24,64,48")) == 0
    keep = box_mask((32, 24, 64, 48), (64, 48), 64)
    assert keep.sum() == 32 * 24 and keep[32:56, 32:].all()  # letterboxed 8 rows down
    for frames in _decoded_frames(box).values():
        assert frames[:, ~keep].max() <= 12 and frames[:, keep].mean() > 40


@pytest.mark.parametrize("text", ["box:1,2,3", "box:5,5,2,9", "sector", "box:a,b,c,d"])
def test_a_bad_mask_option_is_a_clear_error(text, tmp_path, salt_file, capsys):
    write_video(tmp_path / "v.mp4", moving_frames(8, 32, 32), 8.0)
    manifest = write_manifest(tmp_path / "m.csv", [{"scan_id": "a", "patient_id": "p", "video": "v.mp4"}])
    assert shard_main(build_args(manifest, tmp_path / "out", salt_file, f"--mask {text}")) == 2
    assert "expected auto, none or box:x0,y0,x1,y1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError):
        MaskSpec.parse(text)


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real recordings) is not present")
def test_a_real_frozen_scanner_export_fails_under_auto_and_shards_with_its_box(tmp_path, salt_file):
    # SonoSite's export: 960 x 720, text around the image, every frame the same (a frozen loop).
    row = {
        "scan_id": "sonosite",
        "patient_id": "p",
        "video": str(DATA / "vendors/sonosite-anon-eye1-video.mp4"),
    }
    manifest = write_manifest(tmp_path / "m.csv", [row])
    opts = BuildOptions(split_fractions=(1.0, 0.0, 0.0))
    index = build(manifest, tmp_path / "auto", salt_file, opts, log=lambda *_: None)
    assert "does not change over time" in index["errors"][0]["reason"]
    boxed = BuildOptions(split_fractions=(1.0, 0.0, 0.0), mask="box:240,100,480,600")
    index = build(manifest, tmp_path / "box", salt_file, boxed, log=lambda *_: None)
    assert index["errors"] == [] and index["totals"]["clips"] >= 1
    assert index["mask"]["kept_share"]["max"] < 0.3


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real recordings) is not present")
@pytest.mark.parametrize(
    ("video", "kept"),
    [
        ("vendors/clarius-ocular-short.mp4", (0.25, 0.45)),  # square image, text line below it
        ("vendors/butterfly-ocular-phantom.mp4", (0.25, 0.45)),
        ("pocus/videos/Reg_pat1Image_132943.mpeg", (0.7, 0.9)),  # convex fan, MPEG-2
        ("pocus/videos/Cov_convex_volpecelli_sonographic_v1.mov", (0.8, 0.95)),
        ("pocus/videos/Vir_whitelung_h1n1.mp4", (0.6, 0.9)),
        ("pocus/videos/Pneu_prospective_file3.mp4", (0.9, 0.97)),  # cropped to the image: all kept
    ],
)
def test_auto_finds_the_sector_of_real_recordings_and_blanks_what_does_not_change(video, kept):
    from sharding.media import read_video

    frames = read_video(DATA / video, 8.0, 128).frames_THW
    keep = sector_mask(frames)
    assert kept[0] < keep.mean() < kept[1]
    # What it blanks is what does not change: text, scales, letterbox (and a one-pixel rim).
    spread = frames.astype(np.float32).std(axis=0)
    assert np.median(spread[keep]) > 2.0
    outside = ~ndimage.binary_dilation(keep, iterations=2)  # the margins, past the eroded rim
    if outside.any():
        assert np.median(spread[outside]) < 1.0


def test_a_frozen_loop_with_a_ticking_clock_is_not_masked_to_the_clock():
    frames = np.full((20, 64, 64), 90, np.uint8)  # a frozen image...
    for t in range(20):
        frames[t, 2:10, 40:60] = 30 + 10 * t  # ...and a clock that changes every frame
    with pytest.raises(MaskError, match="less than 5%"):
        sector_mask(frames)
