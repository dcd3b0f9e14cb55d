"""DICOM cine loops (multi-frame ultrasound) read as a VideoTrack, as media.read_video reads videos.

A manifest `video` cell naming a DICOM file (told by its content: the 128-byte preamble and the
`DICM` magic) comes here. Frames are decoded one at a time by pydicom (native syntaxes, RLE,
JPEG, JPEG-LS, JPEG 2000 through the pylibjpeg plugins), turned into 8-bit grey and scaled by the
video path's own helper (media.grey_square), and put on the `--fps` grid by the same rule: each
grid point shows the source frame nearest to it in time.

Only pixels leave this module. Errors name what is wrong and what was expected with attribute
keywords, the transfer syntax's name and frame counts or rates, never another attribute's value
(names, dates, UIDs, institution, device) or the file's path; pydicom's own messages and
warnings, which may quote values, are never passed on.

Shapes: N source frames, T grid frames, H x W pixels.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import av
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom as _has_dicm_magic
from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels
from pydicom.uid import UID, UID_dictionary

from sharding.media import MediaError, Timeline, VideoTrack, grey_square

RATE_ATTRIBUTES = ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate")
"""Where a cine loop's frame rate is read from, in this order of preference."""
FPS_RANGE = (0.1, 1000.0)
"""Frame rates (frames/s) accepted from a file or --dicom-fps; outside it the timing is broken."""
GREY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
"""Decoded to RGB by pydicom (YBR_FULL*) or its JPEG 2000 plugins (YBR_ICT, YBR_RCT)."""
PALETTE = "PALETTE COLOR"
# Standard transfer syntaxes newer than pydicom's UID table, named so an error can say which.
NEWER_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
_DICOM_ROOT = "1.2.840.10008."
# The Pixel Data tag (7FE0,0010) as it starts the element, little and big endian.
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


def is_dicom(path: Path) -> bool:
    """Whether `path` holds a DICOM file (preamble + `DICM`), whatever its name ends with."""
    try:
        return _has_dicm_magic(path)
    except OSError:
        return False


@contextmanager
def quiet() -> Iterator[None]:
    """Keep pydicom's warnings and log records (its own and its modules') to itself while reading.

    pydicom warns with element values (an invalid date, an unknown character set, a name it
    cannot decode) through `warnings` and its loggers; logs travel (Ray job logs, CI), so none of
    that may reach them. Records of the `pydicom.*` loggers stop at `pydicom`, whose only handler
    discards them. Scans are read one at a time per process, so a process-wide switch is safe.
    """
    logger = logging.getLogger("pydicom")
    propagated = logger.propagate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.propagate = False
        try:
            yield
        finally:
            logger.propagate = propagated


def transfer_syntax_name(uid: str) -> str:
    """A transfer syntax's name for messages: pydicom's (or the standard's) name, never free text."""
    uid = UID(uid)
    if uid in UID_dictionary and UID_dictionary[uid][1] == "Transfer Syntax":
        return UID_dictionary[uid][0]
    if uid in NEWER_TRANSFER_SYNTAXES:
        return NEWER_TRANSFER_SYNTAXES[uid]
    if uid.is_valid and uid.startswith(_DICOM_ROOT):
        return f"{uid} (a DICOM transfer syntax pydicom does not know)"
    return "<private or unknown>"


def read_header(path: Path) -> Dataset:
    """Every attribute but the pixels, after checking the file can give a picture.

    Raises MediaError when the header cannot be read, the transfer syntax has no decoder (named),
    a decoder plugin is missing (the packages to install), there is no Pixel Data, or the
    photometric interpretation or sample layout is not one this module turns into grey.
    """
    with quiet():
        try:
            with path.open("rb") as f:
                header = pydicom.dcmread(f, stop_before_pixels=True)
                # dcmread stops on the pixel data element's tag: read it to know the pixels are there.
                at_pixels = f.read(4) in _PIXEL_DATA_TAGS
        except OSError as exc:
            raise MediaError(f"cannot read DICOM file: {type(exc).__name__}") from exc
        except Exception as exc:  # pydicom's messages may quote values: only the type is told
            raise MediaError(f"DICOM header cannot be read ({type(exc).__name__})") from exc
        uid = header.file_meta.get("TransferSyntaxUID")
        if not uid:
            raise MediaError("DICOM file meta information has no TransferSyntaxUID")
        name = transfer_syntax_name(uid)
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise MediaError(
                f"transfer syntax {name} is not supported (expected uncompressed, RLE Lossless, JPEG, "
                "JPEG-LS or JPEG 2000 pixel data)"
            ) from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "no plugin"
            raise MediaError(f"no decoder for transfer syntax {name} is installed ({missing})")
        # A deflated data set is inflated as a whole, so the file position says nothing there;
        # iter_pixels reports missing pixels in that case (see read_dicom).
        if not at_pixels and not UID(uid).is_deflated:
            raise MediaError("DICOM file has no Pixel Data (not an image, or the file is truncated)")
        missing_pixel_module = [
            k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if k not in header
        ]
        if missing_pixel_module:
            raise MediaError(f"DICOM image lacks {', '.join(missing_pixel_module)}")
        photometric = str(header.PhotometricInterpretation).strip()
        samples = _integer(header, "SamplesPerPixel", 1)
        if photometric not in (*GREY_PHOTOMETRIC, *COLOUR_PHOTOMETRIC, PALETTE):
            raise MediaError(
                "photometric interpretation is not supported (expected MONOCHROME1, MONOCHROME2, RGB, "
                "YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT or PALETTE COLOR)"
            )
        if samples != (3 if photometric in COLOUR_PHOTOMETRIC else 1):
            raise MediaError(
                f"SamplesPerPixel is {samples}, which the photometric interpretation does not have"
            )
    return header


def frame_count(header: Dataset) -> int:
    """NumberOfFrames (1 when absent, as the standard reads it)."""
    return _integer(header, "NumberOfFrames", 1)


def frame_times(
    header: Dataset, n_frames: int, fallback_fps: float | None = None
) -> tuple[np.ndarray, float]:
    """Each frame's time in seconds from the first [N], and the source frame rate.

    Read from the first of RATE_ATTRIBUTES the file has: FrameTime (ms per frame),
    FrameTimeVector (ms since the previous frame, per frame: irregular timing kept), CineRate or
    RecommendedDisplayFrameRate (frames/s). `fallback_fps` (--dicom-fps) times a file with none
    of them; a value out of FPS_RANGE, a vector of the wrong length or a non-number fails.
    """
    for keyword in RATE_ATTRIBUTES:
        values = _numbers(header, keyword)
        if values is None:
            continue
        if keyword == "FrameTime":
            fps = _rate(keyword, 1000.0 / values[0] if values[0] else math.inf, f"{values[0]:g} ms")
            return np.arange(n_frames) / fps, fps
        if keyword == "FrameTimeVector":
            return _vector_times(values, n_frames)
        fps = _rate(keyword, values[0], f"{values[0]:g} frames/s")
        return np.arange(n_frames) / fps, fps
    if fallback_fps is None:
        raise MediaError(
            "cine loop has no frame rate: no FrameTime, FrameTimeVector, CineRate or "
            "RecommendedDisplayFrameRate; pass --dicom-fps"
        )
    return np.arange(n_frames) / fallback_fps, fallback_fps


def nearest_on_grid(times_N: np.ndarray, end: float, fps: float) -> np.ndarray:
    """Index of the source frame nearest in time to each point j / fps of the grid over [0, end).

    The rule of media.read_video: a grid point before the midpoint of two frames shows the
    earlier one, at or after it the later one; the last frame lasts until `end`.
    """
    n = max(0, math.ceil((end - 1e-6) * fps)) + 1
    grid = np.arange(n) / fps
    grid = grid[grid < end - 1e-6]
    midpoints = (times_N[:-1] + times_N[1:]) / 2
    return np.searchsorted(midpoints, grid, side="right")


def grey_frame(pixels: np.ndarray, header: Dataset, size: int) -> np.ndarray:
    """One decoded frame (as pydicom's iter_pixels gives it) as a size x size letterboxed grey image.

    Colour becomes grey as FFmpeg makes it from an RGB video frame (BT.601 luma, full range:
    0.299 R + 0.587 G + 0.114 B); MONOCHROME1 is inverted; a palette is applied first; more than
    8 bits are brought to 0-255 (see `to_8bit`).
    """
    photometric = str(header.PhotometricInterpretation).strip()
    if photometric == PALETTE:
        rgb = apply_color_lut(pixels, header)[..., :3]  # drop an alpha palette: not part of the picture
        pixels = rgb if rgb.dtype == np.uint8 else np.round(rgb / 257.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = to_8bit(pixels, header)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    fmt = "rgb24" if pixels.ndim == 3 else "gray"
    return grey_square(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=fmt), size)


def to_8bit(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    """Pixel values of more than 8 bits (or signed) mapped to 0-255.

    Grey images with a VOI window (the first WindowCenter/WindowWidth, after RescaleSlope and
    RescaleIntercept) use it, linearly as PS3.3 C.11.2.1.2.1 defines it; otherwise, and for
    colour, the range BitsStored can hold is stretched onto 0-255. VOI LUT sequences and
    sigmoid windows are not applied (ultrasound rarely has them).
    """
    x = pixels.astype(np.float64)
    window = _window(header) if pixels.ndim == 2 else None
    if window is not None:
        slope = (_numbers(header, "RescaleSlope") or [1.0])[0]
        intercept = (_numbers(header, "RescaleIntercept") or [0.0])[0]
        centre, width = window
        x = ((x * slope + intercept - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    else:
        bits = _integer(header, "BitsStored", _integer(header, "BitsAllocated", 8))
        if not 1 <= bits <= 32:
            raise MediaError(f"BitsStored is {bits} (expected 1 to 32)")
        low = -(2 ** (bits - 1)) if _integer(header, "PixelRepresentation", 0) else 0
        x = (x - low) * 255.0 / (2**bits - 1)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def read_dicom(
    path: Path, fps: float, size: int, fallback_fps: float | None = None, limits: Timeline | None = None
) -> VideoTrack:
    """Decode a DICOM cine loop onto a grid of `fps`, letterboxed to size x size grey frames.

    Every frame is decoded, one at a time (a damaged frame anywhere fails the scan, as in the
    video path, and memory stays at one source frame plus the grid); only the frames the grid
    shows are scaled. A single frame (a still image) is refused rather than stretched into a clip.
    """
    limits = limits or Timeline()
    header = read_header(path)
    with quiet():  # converting elements can warn, quoting their values
        n_frames = frame_count(header)
    if n_frames < 2:
        raise MediaError("single-frame DICOM (a still image, not a cine loop)")
    # A damaged header must not size the frame-time arrays: more frames than the longest scan
    # at the highest rate holds is not a cine loop.
    if n_frames > limits.max_scan_seconds * limits.max_fps:
        raise MediaError(
            f"NumberOfFrames is {n_frames}, more than --max-scan-seconds at {limits.max_fps:g} fps"
        )
    with quiet():
        times_N, source_fps = frame_times(header, n_frames, fallback_fps)
    # The video path's timeline limits, before the grid (and its memory) is laid out.
    steps = np.diff(times_N)
    if len(steps):
        k = int(steps.argmax())
        limits.check_step(float(steps[k]), k)
    limits.check_end(float(times_N[-1]))
    limits.check_rate(source_fps)
    sources_T = nearest_on_grid(times_N, times_N[-1] + 1.0 / source_fps, fps)
    shown = np.unique(sources_T)
    squares: list[np.ndarray] = []
    with quiet(), closing(_decoded_frames(path, header, n_frames)) as decoded:
        for k in range(n_frames):  # frames beyond NumberOfFrames are not part of the loop
            try:
                pixels = next(decoded)
            except StopIteration:
                raise MediaError(f"DICOM pixel data holds {k} of its {n_frames} frames (truncated)") from None
            except Exception as exc:  # pydicom's messages may quote values: only the type is told
                where = f"after frame {k - 1} of {n_frames}" if k else "at its first frame"
                raise MediaError(
                    f"DICOM pixel data is truncated or corrupt {where} ({type(exc).__name__})"
                ) from exc
            if len(squares) < len(shown) and shown[len(squares)] == k:
                try:
                    squares.append(grey_frame(pixels, header, size))
                except Exception as exc:  # a palette or value range pydicom refuses; same care
                    raise MediaError(f"DICOM frame {k} cannot be made grey ({type(exc).__name__})") from exc
    frames_THW = np.stack(squares)[np.searchsorted(shown, sources_T)]
    return VideoTrack(
        frames_THW, sources_T, fps, source_fps, n_frames, (int(header.Columns), int(header.Rows))
    )


def _decoded_frames(path: Path, header: Dataset, n_frames: int) -> Iterator[np.ndarray]:
    """The loop's frames in order, decoded one at a time by pydicom.

    pydicom 3.0.2 iterates native (uncompressed) YBR_FULL_422 loops with the wrong frame length
    after the first frame (its iterator switches to YBR_FULL, 3 bytes a pixel instead of 2), so
    those frames are read one call each; every other loop streams through one iterator.
    """
    native = not UID(header.file_meta.TransferSyntaxUID).is_encapsulated
    if native and str(header.PhotometricInterpretation).strip() == "YBR_FULL_422":
        for k in range(n_frames):
            yield next(iter_pixels(str(path), indices=[k]))
    else:
        yield from iter_pixels(str(path))


def _vector_times(increments_ms: list[float], n_frames: int) -> tuple[np.ndarray, float]:
    if len(increments_ms) != n_frames:
        raise MediaError(f"FrameTimeVector has {len(increments_ms)} values for {n_frames} frames")
    # The first value is the first frame's own increment, 0 by the standard: time starts there.
    steps = np.asarray(increments_ms[1:], np.float64)
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise MediaError("FrameTimeVector has a non-positive or non-finite increment (expected > 0 ms)")
    times_N = np.concatenate([[0.0], np.cumsum(steps)]) / 1000.0
    fps = _rate("FrameTimeVector", (n_frames - 1) / times_N[-1], "a mean rate")
    return times_N, fps


def _rate(keyword: str, fps: float, shown: str) -> float:
    low, high = FPS_RANGE
    if not (math.isfinite(fps) and low <= fps <= high):
        raise MediaError(f"{keyword} is {shown} (expected a frame rate of {low:g} to {high:g} frames/s)")
    return fps


def _numbers(header: Dataset, keyword: str) -> list[float] | None:
    """An attribute's values as floats; None when absent or empty. Never quotes the value."""
    if keyword not in header:
        return None
    element = header[keyword]
    if element.value is None or element.value == "" or element.VM == 0:
        return None
    values = element.value if element.VM > 1 else [element.value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise MediaError(f"{keyword} is not a number") from None


def _integer(header: Dataset, keyword: str, default: int) -> int:
    values = _numbers(header, keyword)
    if values is None:
        return default
    if not math.isfinite(values[0]) or values[0] != int(values[0]):
        raise MediaError(f"{keyword} is not an integer")
    return int(values[0])


def _window(header: Dataset) -> tuple[float, float] | None:
    centre, width = _numbers(header, "WindowCenter"), _numbers(header, "WindowWidth")
    if centre is None or width is None or not (math.isfinite(centre[0]) and math.isfinite(width[0])):
        return None
    # A width of 1 (a threshold) or less cannot be stretched linearly: the BitsStored range is used.
    return (centre[0], width[0]) if width[0] > 1 else None
