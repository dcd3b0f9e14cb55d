"""Encoding and decoding of scans and clips with PyAV (FFmpeg without a system ffmpeg).

Shapes: T frames, H x W pixels, N audio samples. Video is grey (uint8, luma); audio is float32
mono in [-1, 1].
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AAC_FRAME = 1024


class MediaError(ValueError):
    """A media file cannot be used; the message says what is wrong (never the source path)."""


def encode_mp4(
    frames_THW: np.ndarray,
    fps: float,
    audio_N: np.ndarray | None,
    audio_rate: int,
    *,
    crf: int = 20,
    threads: int = 1,
    audio_bitrate: int = 64000,
) -> bytes:
    """Encode grey frames (H.264, grey in luma) and mono audio (AAC) into mp4 bytes.

    `threads` is fixed rather than automatic because x264's output depends on its thread
    count, and the phantom promises the same bytes for the same seed on any machine.
    """
    if frames_THW.ndim != 3 or frames_THW.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W], got {frames_THW.dtype} {frames_THW.shape}")
    T, H, W = frames_THW.shape
    if H % 2 or W % 2:
        raise ValueError(f"frame size {H}x{W} must be even for yuv420p")
    buf = io.BytesIO()
    # Empty metadata, no creation time, and bitexact (no muxer version tag): clips carry nothing
    # from the source and nothing about the machine that built them.
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        out.metadata.clear()
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        # mbtree off: with it, x264 gave different bytes for the same frames once FFmpeg's AAC
        # code had run in the process (seen with x264 core 165 in PyAV's FFmpeg), which breaks
        # byte-identical phantoms and rebuilds. Its compression gain on 2 s clips is small.
        vs.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "threads": str(threads),
            "x264-params": "mbtree=0",
        }
        ast = None
        if audio_N is not None:
            ast = out.add_stream("aac", rate=audio_rate)
            ast.layout = "mono"
            ast.bit_rate = audio_bitrate
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(frames_THW[t], format="gray").reformat(format="yuv420p")
            frame.pts = t
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if ast is not None and audio_N is not None:
            samples = np.ascontiguousarray(audio_N, dtype=np.float32)
            for start in range(0, len(samples), AAC_FRAME):
                chunk = samples[start : start + AAC_FRAME]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                out.mux(ast.encode(frame))
            out.mux(ast.encode())
    return buf.getvalue()


@dataclass(frozen=True)
class Timeline:
    """Limits a scan's timeline must keep to; a scan outside them fails (an input that lies).

    A 600 s jump between two frames would otherwise become 600 s of one frozen frame (and a
    longer one exhaust memory), a broken time base a 6 s scan into minutes.
    """

    max_gap_seconds: float = 2.0
    """Largest allowed step between consecutive frames' timestamps (--max-gap-seconds)."""
    max_scan_seconds: float = 4 * 3600.0
    """Longest scan (--max-scan-seconds); checked while decoding, before memory is spent."""
    min_fps: float = 1.0
    """Lowest source frame rate, measured from the timestamps (a broken time base is lower)."""
    max_fps: float = 240.0
    """Highest source frame rate, measured from the timestamps."""

    @staticmethod
    def tolerance(seconds: float) -> float:
        """How far two durations of one scan may differ: max(1 s, 5 %)."""
        return max(1.0, 0.05 * seconds)

    def check_step(self, seconds: float, after_frame: int | None) -> None:
        """A step between two frames (or from the start to the first, `after_frame` None)."""
        if seconds > self.max_gap_seconds:
            where = f"after frame {after_frame}" if after_frame is not None else "before the first frame"
            raise MediaError(
                f"frame timestamps jump by {seconds:.1f} s {where} "
                f"(more than --max-gap-seconds {self.max_gap_seconds:g})"
            )

    def check_end(self, seconds: float) -> None:
        """A frame's time against the longest scan."""
        if seconds > self.max_scan_seconds:
            raise MediaError(f"the video runs past --max-scan-seconds {self.max_scan_seconds:g}")

    def check_rate(self, fps: float) -> None:
        """The source frame rate against the plausible range."""
        if not self.min_fps <= fps <= self.max_fps:
            raise MediaError(
                f"the frame rate from the timestamps is {fps:.3g} fps, outside "
                f"{self.min_fps:g}-{self.max_fps:g} fps (a broken time base?)"
            )


@dataclass
class VideoTrack:
    """Frames resampled onto a regular time grid, with the source frame each one came from."""

    frames_THW: np.ndarray
    source_index_T: np.ndarray
    fps: float
    source_fps: float
    source_frames: int
    source_wh: tuple[int, int] | None = None
    """Width and height of the source frames (what a --mask box is given in)."""


def letterbox(gray_HW: np.ndarray, size: int) -> np.ndarray:
    """Centre a frame no larger than size x size on a black square of that side."""
    h, w = gray_HW.shape
    out = np.zeros((size, size), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = gray_HW
    return out


def fitted_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) a width x height frame is scaled to inside a size x size square: aspect kept, even
    sides (yuv420p)."""
    scale = size / max(width, height)
    return max(2, round(width * scale)) // 2 * 2, max(2, round(height * scale)) // 2 * 2


def grey_square(frame: av.VideoFrame, size: int) -> np.ndarray:
    """A decoded frame scaled (aspect kept, even sides) and letterboxed to a size x size grey image."""
    w, h = fitted_size(frame.width, frame.height, size)
    return letterbox(frame.reformat(width=w, height=h, format="gray").to_ndarray(), size)


def read_video(path: Path, fps: float, size: int, limits: Timeline = Timeline()) -> VideoTrack:
    """Decode a scan's video onto a grid of `fps`, letterboxed to size x size grey frames.

    Each output frame is the source frame nearest in time to the grid point, so variable or
    fractional (29.97) source rates land on a regular grid. The timeline is checked against
    `limits`, and the decoded duration against the one the file declares.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open video: {type(exc).__name__}") from exc
    with container:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = float(container.start_time or 0) / av.time_base
        frames: list[np.ndarray] = []
        sources: list[int] = []
        prev: np.ndarray | None = None
        prev_t = prev_i = 0
        period_sum, n_src = 0.0, 0
        next_j = 0
        try:
            for n_src, frame in enumerate(container.decode(stream)):
                t = (
                    frame.time if frame.time is not None else n_src / float(stream.average_rate or 30)
                ) - start
                # Raised while decoding: a 10^7 s gap must not be filled with frames first.
                limits.check_step(t - prev_t if prev is not None else t, prev_i if prev is not None else None)
                limits.check_end(t)
                gray = grey_square(frame, size)
                source_wh = (frame.width, frame.height)
                if prev is not None:
                    period_sum += t - prev_t
                    # Nearest-frame rule: grid points before the midpoint belong to the previous frame.
                    while next_j / fps < (prev_t + t) / 2:
                        frames.append(prev)
                        sources.append(prev_i)
                        next_j += 1
                prev, prev_t, prev_i = gray, t, n_src
        except av.error.FFmpegError as exc:
            # FFmpeg's class of error, never its message: it can quote the file's name or bytes.
            if prev is None:
                raise MediaError(f"video stream cannot be decoded ({type(exc).__name__})") from exc
            raise MediaError(f"video stream is corrupt after frame {prev_i} ({type(exc).__name__})") from exc
        if prev is None:
            raise MediaError("video stream has no decodable frames (zero duration)")
        count = n_src + 1
        source_fps = (count - 1) / period_sum if period_sum > 0 else float(stream.average_rate or fps)
        limits.check_rate(source_fps)
        end = prev_t + 1.0 / source_fps
        declared = _declared_seconds(container, stream)
        if declared is not None and abs(end - declared) > Timeline.tolerance(declared):
            raise MediaError(
                f"the decoded video lasts {end:.1f} s, the file declares {declared:.1f} s "
                "(truncated or damaged; tolerance max(1 s, 5 %))"
            )
        while next_j / fps < end - 1e-6:
            frames.append(prev)
            sources.append(prev_i)
            next_j += 1
    return VideoTrack(np.stack(frames), np.asarray(sources), fps, source_fps, count, source_wh)


def _declared_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The video stream's duration as the file states it (stream, else container), if it does."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def read_audio(path: Path, rate: int, *, start_offset: float = 0.0) -> np.ndarray | None:
    """Decode the first audio stream, resampled to mono `rate`, on the container's timeline.

    Returns None when the file has no audio stream. Samples before the container start are cut
    and a late-starting stream is padded with silence, so sample k is at time k / rate.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open audio: {type(exc).__name__}") from exc
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        start = float(container.start_time or 0) / av.time_base + start_offset
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        try:
            for frame in container.decode(stream):
                if first_t is None and frame.time is not None:
                    first_t = frame.time - start
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise MediaError(f"audio stream is corrupt ({type(exc).__name__})") from exc
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    offset = round((first_t or 0.0) * rate)
    if offset > 0:
        samples = np.concatenate([np.zeros(offset, np.float32), samples])
    elif offset < 0:
        samples = samples[-offset:]
    return samples.astype(np.float32, copy=False)
