"""DICOM cine loops as scans: transfer syntaxes and colour models shard with their pixels, the frame
rate comes from each timing attribute (or --dicom-fps), bad files are failed scans, and no
attribute value reaches a shard, index.json or a log."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from pathlib import Path

import decord
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import convert_color_space, get_decoder, iter_pixels
from pydicom.uid import (
    MPEG2MPML,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from sharding import dicom
from sharding.__main__ import main as shard_main
from sharding.build import BuildOptions, build
from sharding.deid import hash_id
from tests.conftest import SALT
from tests.sharding.dicomkit import MARKERS, level, ramp, write_dicom
from tests.sharding.scankit import (
    assert_rows_reported,
    build_args,
    moving_frames,
    tone,
    write_audio,
    write_manifest,
    write_video,
)
from tests.sharding.test_build import all_clips
from usvs_dist.config import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.pipeline import EpochLoader

FPS, SIZE = 8.0, 32
QUIET = dict(log=lambda *_: None)
# Whole frames: the loops are flat grey levels checked to 2.5 levels, and a masked rim would make
# the encoder round them differently (masking has its own tests, test_mask.py).
OPTS = BuildOptions(clip_seconds=1.0, fps=FPS, size=SIZE, split_fractions=(1.0, 0.0, 0.0), mask="none")
# A real vendor export among the test recordings in ../shared/data, outside the repo by design.
VENDOR = Path(__file__).resolve().parents[3] / "shared" / "data" / "vendors" / "sonoque_anechoic-3mm-3mm.dcm"


def _manifest(folder: Path, videos: dict[str, str]) -> Path:
    """A manifest of one scan per (scan_id: video file), each its own patient, without narration
    (a DICOM cine has no sound track: these are video-only scans)."""
    rows = [
        {"scan_id": sid, "patient_id": f"p{i}", "video": video}
        for i, (sid, video) in enumerate(videos.items())
    ]
    return write_manifest(folder / "manifest.csv", rows)


def _clips(out: Path, scan_id: str) -> list[tuple[dict, np.ndarray]]:
    """(meta, grey frames [T, H, W]) of a scan's clips."""
    scan = hash_id(SALT, "scan", scan_id)
    clips = []
    for _, meta, mp4 in all_clips(out):
        if meta[schema.META_SCAN] == scan:
            video = decord.VideoReader(io.BytesIO(mp4), num_threads=1)
            clips.append((meta, video.get_batch(list(range(len(video)))).asnumpy()[..., 0]))
    return clips


def _assert_nearest_frames(out: Path, scan_id: str, times: list[float], shown: list[float], tol: float):
    """Each stored frame shows (in its centre) `shown[k]` of a source frame k nearest to it in time.

    Returns the number of the scan's clips."""
    clips = _clips(out, scan_id)
    assert clips, scan_id
    for meta, frames in clips:
        for j, frame in enumerate(frames):
            t = meta[schema.META_T0] + j / meta[schema.META_FPS]
            gap = min(abs(x - t) for x in times)
            nearest = [k for k, x in enumerate(times) if abs(x - t) <= gap + 1e-6]  # two at a tie
            value = float(frame[14:18, 14:18].mean())
            assert min(abs(value - shown[k]) for k in nearest) <= tol, (
                f"{scan_id}: t={t:.3f} shows {value:.1f}, not frame {nearest}"
            )
    return len(clips)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _colour(grey_THW: np.ndarray) -> np.ndarray:
    """R = G = the grey, B = its negative: the luma still tells every frame apart."""
    return np.stack([grey_THW, grey_THW, 255 - grey_THW], axis=-1)


def _palette() -> dict:
    """A 16-bit PALETTE COLOR table mapping index i to (i, i, 255 - i)."""
    i = np.arange(256)
    table = {"Red": i, "Green": i, "Blue": 255 - i}
    attrs = {}
    for colour, values in table.items():
        attrs[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        attrs[f"{colour}PaletteColorLookupTableData"] = (values * 257).astype("<u2").tobytes()
    return attrs


N_FRAMES = 30  # 3 s at FrameTime 100 ms
GREY = ramp(N_FRAMES, 48, 64)
LEVELS = [float(level(k)) for k in range(N_FRAMES)]
COLOUR_LEVELS = [float(_luma(np.array([v, v, 255 - v]))) for v in LEVELS]
SCANS = {
    # scan_id: (file name, pixels, writer options, the grey each source frame should show, tolerance)
    "explicit VR LE, named .mp4": ("cine.mp4", GREY, {}, LEVELS, 2.5),
    "implicit VR LE, no extension": ("cine", GREY, {"syntax": ImplicitVRLittleEndian}, LEVELS, 2.5),
    "RLE Lossless, odd size": ("rle.dcm", ramp(N_FRAMES, 51, 77), {"syntax": RLELossless}, LEVELS, 2.5),
    "JPEG 2000 Lossless": ("j2k.dcm", GREY, {"syntax": JPEG2000Lossless}, LEVELS, 2.5),
    "JPEG Baseline": ("jpeg.dcm", GREY, {"syntax": JPEGBaseline8Bit}, LEVELS, 3.5),
    "RGB, RLE Lossless": ("rgb.dcm", _colour(GREY), {"syntax": RLELossless}, COLOUR_LEVELS, 2.5),
    "YBR_FULL_422, JPEG Baseline": (
        "ybr422.dcm",
        _colour(GREY),
        {"syntax": JPEGBaseline8Bit},
        COLOUR_LEVELS,
        3.5,
    ),
    "YBR_FULL, explicit VR LE": (
        "ybr.dcm",
        convert_color_space(_colour(GREY), "RGB", "YBR_FULL"),
        {"photometric": "YBR_FULL"},
        COLOUR_LEVELS,
        3.0,
    ),
    "MONOCHROME1": ("mono1.dcm", 255 - GREY, {"photometric": "MONOCHROME1"}, LEVELS, 2.5),
    "16 bits allocated, 12 stored": (
        "deep.dcm",
        GREY.astype(np.uint16) * 16,
        {"bits_stored": 12},
        [v * 16 * 255 / 4095 for v in LEVELS],
        2.5,
    ),
    "PALETTE COLOR": (
        "palette.dcm",
        GREY,
        {"photometric": "PALETTE COLOR", **_palette()},
        COLOUR_LEVELS,
        2.5,
    ),
}


def test_cine_loops_of_every_transfer_syntax_and_colour_model_shard_with_their_pixels(tmp_path, salt_file):
    for name, pixels, kw, _, _ in SCANS.values():
        write_dicom(tmp_path / name, pixels, FrameTime=100, **kw)
    manifest = _manifest(tmp_path, {sid: scan[0] for sid, scan in SCANS.items()})
    index = build(manifest, tmp_path / "out", salt_file, OPTS, **QUIET)

    assert index["errors"] == [] and index["totals"]["scans"] == len(SCANS)
    assert index["totals"]["clips"] == 3 * len(SCANS)  # 3 s each, 1 s clips
    times = [k * 0.1 for k in range(N_FRAMES)]
    for sid, (_, _, _, shown, tol) in SCANS.items():
        assert _assert_nearest_frames(tmp_path / "out", sid, times, shown, tol) == 3, sid

    cfg = DataConfig(batch_size=4, loader_workers=0, num_frames=6, frame_size=24)
    batch = next(iter(EpochLoader(cfg, tmp_path / "out", rank=0, world_size=1, audio=False).epoch(0)))
    assert batch["video"].shape == (4, 1, 6, 24, 24)
    assert batch["video"].std() > 0.01  # pictures, not letterbox only


# scan_id: (timing attributes, each source frame's time in seconds)
RATE_SCANS = {
    "FrameTime 100 ms": ({"FrameTime": 100}, [k * 0.1 for k in range(30)]),
    "FrameTimeVector: 20 fps, then 5 fps": (
        {"FrameTimeVector": [0] + [50] * 10 + [200] * 10},
        [k * 0.05 for k in range(11)] + [0.5 + k * 0.2 for k in range(1, 11)],
    ),
    "CineRate 12": ({"CineRate": 12}, [k / 12 for k in range(36)]),
    "RecommendedDisplayFrameRate 15": ({"RecommendedDisplayFrameRate": 15}, [k / 15 for k in range(45)]),
    "FrameTime before the others": (
        {
            "FrameTime": 100,
            "FrameTimeVector": [0] + [50] * 29,
            "CineRate": 25,
            "RecommendedDisplayFrameRate": 30,
        },
        [k * 0.1 for k in range(30)],
    ),
    "CineRate before RecommendedDisplayFrameRate": (
        {"CineRate": 12, "RecommendedDisplayFrameRate": 30},
        [k / 12 for k in range(36)],
    ),
}


def test_the_frame_rate_comes_from_each_timing_attribute_in_order(tmp_path, salt_file):
    for i, (attrs, times) in enumerate(RATE_SCANS.values()):
        write_dicom(tmp_path / f"rate{i}.dcm", ramp(len(times), 48, 64), **attrs)
    manifest = _manifest(tmp_path, {sid: f"rate{i}.dcm" for i, sid in enumerate(RATE_SCANS)})
    index = build(manifest, tmp_path / "out", salt_file, OPTS, **QUIET)

    assert index["errors"] == []
    for sid, (_, times) in RATE_SCANS.items():
        levels = [float(level(k)) for k in range(len(times))]
        clips = _assert_nearest_frames(tmp_path / "out", sid, times, levels, 2.5)
        # The last frame lasts one (mean) period; the vector's 20 frames over 2.5 s end at 2.625 s.
        duration = times[-1] + times[-1] / (len(times) - 1)
        assert clips == int(duration + 1e-6), sid


def test_a_loop_without_a_frame_rate_fails_naming_the_attributes_unless_dicom_fps(
    tmp_path, salt_file, capsys
):
    n = 25
    bad_rates = {
        "no rate": (
            {},
            "cine loop has no frame rate: no FrameTime, FrameTimeVector, CineRate or "
            "RecommendedDisplayFrameRate; pass --dicom-fps",
        ),
        "FrameTime 0": (
            {"FrameTime": 0},
            "FrameTime is 0 ms (expected a frame rate of 0.1 to 1000 frames/s)",
        ),
        "CineRate -5": ({"CineRate": -5}, "CineRate is -5 frames/s (expected a frame rate"),
        "FrameTime 1 hour": ({"FrameTime": 3_600_000}, "FrameTime is 3.6e+06 ms (expected a frame rate"),
        "vector with a 0 step": (
            {"FrameTimeVector": [0] + [100] * 10 + [0] + [100] * 13},
            "FrameTimeVector has a non-positive or non-finite increment",
        ),
        "vector too short": (
            {"FrameTimeVector": [0] + [100] * 5},
            "FrameTimeVector has 6 values for 25 frames",
        ),
    }
    for i, (attrs, _) in enumerate(bad_rates.values()):
        write_dicom(tmp_path / f"r{i}.dcm", ramp(n, 48, 64), **attrs)
    manifest = _manifest(tmp_path, {sid: f"r{i}.dcm" for i, sid in enumerate(bad_rates)})
    args = build_args(
        manifest,
        tmp_path / "out",
        salt_file,
        f"--fps {FPS} --size {SIZE} --clip-seconds 1 --split 1,0,0 --no-progress",
    )

    assert shard_main(args) == 1
    index = json.loads((tmp_path / "out" / schema.INDEX_NAME).read_text())
    reasons = {e["manifest_line"]: e["reason"] for e in index["errors"]}
    for line, (sid, (_, words)) in enumerate(bad_rates.items(), start=2):
        assert words in reasons[line], (sid, reasons[line])

    # --dicom-fps times the loop that states no rate; it does not overrule a broken one.
    assert shard_main([*args, "--overwrite", "--allow-failures", "--dicom-fps", "12.5"]) == 0
    index = json.loads((tmp_path / "out" / schema.INDEX_NAME).read_text())
    assert sorted(e["manifest_line"] for e in index["errors"]) == list(range(3, 2 + len(bad_rates)))
    levels = [float(level(k)) for k in range(n)]
    assert _assert_nearest_frames(tmp_path / "out", "no rate", [k / 12.5 for k in range(n)], levels, 2.5) == 2
    capsys.readouterr()
    for value in ("0", "-3", "5000"):
        assert shard_main([*args, "--overwrite", "--dicom-fps", value]) == 2
        assert "--dicom-fps must be a frame rate in [0.1, 1000] frames/s" in capsys.readouterr().err
    for value in ("nan", "inf"):  # refused with every other non-finite option, before the range
        assert shard_main([*args, "--overwrite", "--dicom-fps", value]) == 2
        assert "--dicom-fps must be a finite number" in capsys.readouterr().err


def _truncated(src: Path, dst: Path, fraction: float | None = None, before: bytes = b"") -> str:
    """`src` cut at `fraction` of its length, or just before the bytes `before`."""
    data = src.read_bytes()
    dst.write_bytes(data[: data.index(before) if before else round(len(data) * fraction)])
    return dst.name


def _with_syntax(src: Path, dst: Path, uid: str) -> str:
    """`src` rewritten as encapsulated pixel data of transfer syntax `uid` (pydicom writes no unknown
    syntax: the file is written as MPEG2MPML, whose UID is as long, and the UID swapped in the bytes)."""
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)] * int(ds.NumberOfFrames))
    ds["PixelData"].VR = "OB"
    ds.save_as(dst, enforce_file_format=True)
    old = MPEG2MPML.encode() + b"\0"
    assert len(uid) + 1 == len(old) and dst.read_bytes().count(old) == 1
    dst.write_bytes(dst.read_bytes().replace(old, uid.encode() + b"\0"))
    return dst.name


def _bad_dicoms(raw: Path) -> dict[str, tuple[dict, str, str]]:
    """scan_id: (manifest fields, file column at fault, words of the reason) of bad DICOM scans."""
    good = write_dicom(raw / "good.dcm", ramp(20, 48, 64), syntax=RLELossless, FrameTime=100)
    native = write_dicom(raw / "native.dcm", ramp(20, 48, 64), FrameTime=100)
    no_pixels = write_dicom(raw / "no_pixels.dcm", ramp(20, 48, 64), FrameTime=100)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels, enforce_file_format=True)
    write_dicom(raw / "still.dcm", ramp(1, 48, 64), FrameTime=100)
    write_dicom(raw / "still_no_count.dcm", ramp(1, 48, 64), NumberOfFrames=None)
    for k in range(2):
        write_dicom(raw / f"series{k}.dcm", ramp(1, 48, 64))
    (raw / "junk.dcm").write_bytes(
        bytes(128) + b"DICM" + bytes(np.random.default_rng(0).integers(0, 256, 900))
    )
    truncate_words = "DICOM pixel data is truncated or corrupt after frame"
    return {
        "truncated RLE": ({"video": _truncated(good, raw / "t_rle.dcm", 0.6)}, "video", truncate_words),
        "truncated native": (
            {"video": _truncated(native, raw / "t_native.dcm", 0.9)},
            "video",
            truncate_words,
        ),
        "truncated header": (
            {"video": _truncated(native, raw / "t_header.dcm", before=b"MARKERHOSPITAL")},
            "video",
            "no Pixel Data (not an image, or the file is truncated)",
        ),
        "no pixel data": ({"video": "no_pixels.dcm"}, "video", "DICOM file has no Pixel Data"),
        "JPEG XL": (
            {"video": _with_syntax(good, raw / "jxl.dcm", "1.2.840.10008.1.2.4.112")},
            "video",
            "transfer syntax JPEG XL is not supported",
        ),
        "MPEG-4": (
            {"video": _with_syntax(good, raw / "h264.dcm", "1.2.840.10008.1.2.4.102")},
            "video",
            "transfer syntax MPEG-4 AVC/H.264 High Profile / Level 4.1 is not supported",
        ),
        "private syntax": (
            {"video": _with_syntax(good, raw / "private.dcm", "1.3.6.1.4.1.99999.1.2.3")},
            "video",
            "transfer syntax <private or unknown> is not supported",
        ),
        "single frame": (
            {"video": "still.dcm"},
            "video",
            "single-frame DICOM (a still image, not a cine loop)",
        ),
        "no NumberOfFrames": ({"video": "still_no_count.dcm"}, "video", "single-frame DICOM"),
        "series file 0": ({"video": "series0.dcm"}, "video", "single-frame DICOM"),
        "series file 1": ({"video": "series1.dcm"}, "video", "single-frame DICOM"),
        "junk after the magic": ({"video": "junk.dcm"}, "video", "DICOM"),
        "good DICOM, video-only": ({"video": "good.dcm"}, None, None),
        "good DICOM, narration file": ({"video": "good.dcm", "audio": "narration.wav"}, None, None),
    }


def test_bad_dicoms_are_failed_scans_and_the_others_are_sharded(tmp_path, salt_file, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    cases = _bad_dicoms(raw)
    write_video(raw / "good.mp4", moving_frames(20, 48, 64), 10.0, audio_N=tone(2.0, 16000), audio_rate=16000)
    cases["good mp4"] = ({"video": "good.mp4"}, None, None)
    write_audio(raw / "narration.wav", tone(2.0, 16000), 16000)  # as long as good.dcm
    rows = [
        {"scan_id": sid, "patient_id": f"p{i}", **fields}
        for i, (sid, (fields, _, _)) in enumerate(cases.items())
    ]
    manifest = write_manifest(raw / "manifest.csv", rows)
    out = tmp_path / "out"
    args = build_args(
        manifest, out, salt_file, f"--fps {FPS} --size {SIZE} --clip-seconds 1 --split 1,0,0 --no-progress"
    )

    assert shard_main(args) == 1
    err = capsys.readouterr().err
    index = json.loads((out / schema.INDEX_NAME).read_text())
    assert_rows_reported(index, err, cases)
    assert index["totals"]["scans"] == 3 and index["totals"]["clips"] == 6  # 2 s each
    assert index["totals"]["clips_without_narration"] == 2  # the video-only DICOM
    assert sorted(p.name for p in out.iterdir()) == [schema.INDEX_NAME, "train-000000.tar", "train.wids.json"]
    assert str(raw) not in json.dumps(index) and str(raw) not in err


def test_no_dicom_attribute_value_reaches_a_shard_the_index_or_a_log(tmp_path, salt_file, capfd, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings while the test writes odd values
        cases = _bad_dicoms(raw)
        # A character set pydicom does not know makes it warn, quoting the value, when it reads text.
        colour = write_dicom(
            raw / "colour.dcm",
            _colour(ramp(20, 48, 64)),
            syntax=JPEGBaseline8Bit,
            CineRate=10,
            SpecificCharacterSet="MARKERCHARSET",
        )
    keep = [
        "truncated RLE",
        "no pixel data",
        "JPEG XL",
        "single frame",
        "junk after the magic",
        "good DICOM, video-only",
    ]
    videos = {sid: cases[sid][0]["video"] for sid in keep} | {"colour": colour.name}
    manifest = _manifest(raw, videos)
    out = tmp_path / "out"
    capfd.readouterr()
    caplog.clear()

    args = build_args(manifest, out, salt_file, f"--fps {FPS} --size {SIZE} --clip-seconds 1 --split 1,0,0")
    # pytest takes warnings and log records away from stderr: catch them here, as a log would.
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        assert shard_main(args) == 1
    logs = "".join([*capfd.readouterr(), caplog.text, *(str(w.message) for w in caught)]).encode()
    index = (out / schema.INDEX_NAME).read_bytes()
    assert json.loads(index)["totals"]["clips"] == 4 and logs.count(b"skipped manifest line") == 5
    shards = [p.read_bytes() for p in out.glob("*.tar")]
    for marker in MARKERS:
        assert marker not in index and marker not in logs, marker
        assert all(marker not in shard for shard in shards), marker


def test_a_missing_decoder_plugin_is_a_failed_scan_naming_what_to_install(tmp_path, salt_file, monkeypatch):
    write_dicom(tmp_path / "j2k.dcm", ramp(20, 48, 64), syntax=JPEG2000Lossless, FrameTime=100)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    index = build(_manifest(tmp_path, {"j2k": "j2k.dcm"}), tmp_path / "out", salt_file, OPTS, **QUIET)
    assert index["errors"][0]["reason"] == (
        "no decoder for transfer syntax JPEG 2000 Image Compression (Lossless Only) is installed "
        "(pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0)"
    )


STILLS = [
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless, 8-bit grey
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, 16-bit signed with a window
    "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS, RGB
    "JPGExtended.dcm",  # JPEG Extended, 12 bits
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, YBR_FULL
    "JPEG2000.dcm",  # JPEG 2000 (lossy), 16-bit signed
    "examples_jpeg2k.dcm",  # JPEG 2000 Lossless, YBR_RCT
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422 (subsampled)
    "examples_palette.dcm",  # PALETTE COLOR
]


@pytest.mark.parametrize("sample", STILLS)
def test_stills_of_more_syntaxes_repeated_into_a_loop_decode(tmp_path, sample):
    """pydicom ships stills in syntaxes and colour models the writer above has no encoder for:
    each still's pixel data is repeated into a 12-frame loop, whose frames must all be the still."""
    with dicom.quiet():
        still = pydicom.dcmread(get_testdata_file(sample))
        reference = next(iter_pixels(still))
    if still.file_meta.TransferSyntaxUID.is_encapsulated:
        frame = next(generate_frames(still.PixelData, number_of_frames=1))
        still.PixelData = encapsulate([frame] * 12)
    else:
        still.PixelData = still.PixelData * 12
    still.NumberOfFrames, still.FrameTime = 12, 100
    if reference.ndim == 2 and reference.dtype != np.uint8 and "WindowWidth" not in still:
        # Without a window these (CT, MR) pictures use a sliver of their BitsStored range.
        still.WindowCenter, still.WindowWidth = (
            (int(reference.min()) + int(reference.max())) // 2,
            int(np.ptp(reference)) + 1,
        )
    still.save_as(tmp_path / "loop.dcm", enforce_file_format=True)

    track = dicom.read_dicom(tmp_path / "loop.dcm", FPS, SIZE)
    expected = dicom.grey_frame(reference, dicom.read_header(tmp_path / "loop.dcm"), SIZE)
    assert track.source_fps == 10.0 and track.source_frames == 12 and len(track.frames_THW) == 10
    assert len(np.unique(expected)) > 8  # a picture, not a blank
    assert all((f == expected).all() for f in track.frames_THW)


def test_a_real_cine_from_pydicom_test_files_reads_frame_by_frame():
    """examples_ybr_color.dcm: an ultrasound cine, 30 frames of JPEG Baseline YBR_FULL_422."""
    path = Path(get_testdata_file("examples_ybr_color.dcm"))
    with dicom.quiet():
        ds = pydicom.dcmread(path)
        source = ds.pixel_array  # [N, H, W, 3], RGB
    track = dicom.read_dicom(path, FPS, 64)
    assert track.source_frames == 30 and track.source_fps == pytest.approx(1000 / float(ds.FrameTime))
    for frame, k in zip(track.frames_THW, track.source_index_T, strict=True):
        assert (frame == dicom.grey_frame(source[k], ds, 64)).all()
    assert len(set(track.source_index_T)) > 1


def _header(**attrs) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 16, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    "attrs, stored, shown",
    [
        ({"WindowCenter": 1000, "WindowWidth": 501}, [600, 1000, 1300], [0, 128, 255]),
        (
            {"WindowCenter": 1000, "WindowWidth": 501, "PhotometricInterpretation": "MONOCHROME1"},
            [600, 1300],
            [255, 0],
        ),
        (
            {"WindowCenter": 100, "WindowWidth": 201, "RescaleSlope": 0.5, "RescaleIntercept": -400},
            [800, 1000],
            [0, 128],
        ),
        ({"BitsStored": 12}, [0, 2048, 4095], [0, 128, 255]),
        ({"BitsStored": 12, "PixelRepresentation": 1}, [-2048, 0, 2047], [0, 128, 255]),
    ],
)
def test_more_than_8_bits_are_windowed_or_scaled_by_bits_stored(attrs, stored, shown):
    header = _header(**attrs)
    dtype = np.int16 if header.PixelRepresentation else np.uint16
    for value, expected in zip(stored, shown, strict=True):
        square = dicom.grey_frame(np.full((16, 16), value, dtype), header, 16)
        assert abs(int(square[8, 8]) - expected) <= 1, (attrs, value, square[8, 8])


@pytest.mark.skipif(not VENDOR.is_file(), reason="../shared/data (the vendor DICOM export) is not present")
def test_a_real_single_frame_jpeg_export_decodes_and_is_refused_as_a_still(tmp_path, salt_file):
    header = dicom.read_header(VENDOR)
    assert header.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and dicom.frame_count(header) == 1
    with dicom.quiet():
        pixels = next(iter_pixels(VENDOR))
    assert pixels.shape == (1455, 2083, 3)
    square = dicom.grey_frame(pixels, header, 256).astype(float)
    # 2083 x 1455 letterboxed to 256: 178 rows of picture between black bands of 39.
    assert square[:36].max() == 0 and square[-36:].max() == 0
    picture = square[48:208]
    assert 15 < picture.mean() < 80 and picture.std() > 10
    # The phantom's two 3 mm anechoic targets: dark discs in the grey speckle, where the export has them.
    speckle = square[100:130, 120:160].mean()
    for x in (103, 172):
        assert square[114:119, x - 2 : x + 3].mean() < speckle / 3, x

    write_audio(tmp_path / "n.wav", tone(3.0, 16000), 16000)
    manifest = write_manifest(
        tmp_path / "m.csv", [{"scan_id": "vendor", "patient_id": "p", "video": str(VENDOR), "audio": "n.wav"}]
    )
    index = build(manifest, tmp_path / "out", salt_file, OPTS, **QUIET)
    assert index["errors"] == [
        {
            "manifest_line": 2,
            "scan": hash_id(SALT, "scan", "vendor"),
            "file": "video",
            "reason": "single-frame DICOM (a still image, not a cine loop)",
        }
    ]


def test_bench_runs_on_a_manifest_of_dicoms(tmp_path, capsys):
    write_dicom(tmp_path / "a.dcm", ramp(30, 48, 64), syntax=RLELossless, FrameTime=100)
    write_dicom(tmp_path / "b.dcm", _colour(ramp(24, 48, 64)), syntax=JPEGBaseline8Bit, CineRate=8)
    manifest = _manifest(tmp_path, {"a": "a.dcm", "b": "b.dcm"})
    assert shard_main(["bench", str(manifest), "--size", str(SIZE), "--clip-seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 scans, 6.0 scan-seconds" in out and "(0 scans failed)" in out
    rows = {
        line.split("  ")[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("build", "baseline"))
    }
    assert [r[-5] for r in rows.values()] == ["6", "6"]  # the same clips on both paths
    assert re.fullmatch(
        r"scan_s_per_core_s=\d+\.\d{3} ratio_vs_baseline=\d+\.\d{3}", out.strip().splitlines()[-1]
    )
