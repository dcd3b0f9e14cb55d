"""The decoders a clip's mp4 bytes go through: Decord or TorchCodec, behind one interface.

`data.decoder` picks one (`decord`, `torchcodec`, or `auto`: TorchCodec when it imports and finds
the system's FFmpeg libraries, else Decord; decided once per process) and `data.decode_device`
where it decodes. Both give
the loader (`usvs_dist.data.decode.ClipDecoder`) the same things: the clip's frame count and key
frames, the grey channel of the frames it asks for as uint8 [N, H, W] (a CUDA tensor when decoding
on the GPU), and the narration as mono float samples at the data config's rate. The shards store
H.264 in yuv420p with grey pixels, so the first RGB channel is the grey level; the two backends'
frames and narration agree on them (tests/data/test_backends.py, docs/measurements.md).

GPU decoding: TorchCodec's Linux wheel on PyPI (0.17) decodes on NVIDIA GPUs (NVDEC) beside a
CUDA torch; Decord needs a CUDA build of its own (none on PyPI). Whether the GPU is usable is
found by decoding a tiny H.264 clip there once per process (a CPU-only TorchCodec, a missing
libnvcuvid or a fall-back to the CPU all count as not usable). Where the GPU is asked for and not
usable, `gpu` is an error naming the key and `auto` decodes on the CPU with a warning.
"""

from __future__ import annotations

import functools
import io
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.utils.dlpack

from usvs_dist.config import ConfigError

log = logging.getLogger(__name__)
DECODERS = ("decord", "torchcodec")
"""The backends `data.decoder` names (besides `auto`)."""


class ClipVideo(Protocol):
    """One clip's video stream, opened from its bytes."""

    def __len__(self) -> int:
        """Frames the stream holds."""

    def key_indices(self) -> list[int]:
        """Indices of its key frames (decoding starts at one of them)."""

    def grey(self, wanted: list[int], order: list[int]) -> torch.Tensor:
        """uint8 [len(order), H, W]: the grey channel of frames `wanted` (sorted, distinct),
        decoded once each and returned in `order` (positions into `wanted`)."""


class Backend(ABC):
    """A decoder of the shards' mp4 clips on one device."""

    name: str
    on_gpu: bool
    errors: tuple[type[BaseException], ...]
    """The exceptions this backend raises on undecodable bytes (a bad sample, not a crash)."""

    @abstractmethod
    def video(self, data: bytes, threads: int) -> ClipVideo:
        """The clip's video stream; `threads` decode threads (0: the library's choice)."""

    @abstractmethod
    def wave(self, data: bytes, sample_rate: int) -> np.ndarray:
        """The clip's narration as mono float32 samples at `sample_rate`."""

    @abstractmethod
    def all_frames(self, data: bytes) -> torch.Tensor:
        """Every frame of the clip in order, uint8 [T, H, W, 3] on the CPU (readers outside the loader)."""

    def describe(self) -> str:
        """The backend, its version and device, for logs and MLflow."""
        return f"{self.name} on {'GPU' if self.on_gpu else 'CPU'}"


# -- Decord ------------------------------------------------------------------------------------


class _DecordVideo:
    def __init__(self, reader, on_gpu: bool):
        self.reader, self.on_gpu = reader, on_gpu

    def __len__(self) -> int:
        return len(self.reader)

    def key_indices(self) -> list[int]:
        return list(self.reader.get_key_indices())

    def grey(self, wanted: list[int], order: list[int]) -> torch.Tensor:
        frames = self.reader.get_batch(wanted)
        # Only the first channel of only the used frames is copied (numpy's index does that in
        # one pass; torch's was 2.5 times slower). A CUDA Decord's frames stay on the GPU.
        if self.on_gpu:
            return torch.utils.dlpack.from_dlpack(frames.to_dlpack())[..., 0][order]
        return torch.from_numpy(frames.asnumpy()[order, :, :, 0])


class DecordBackend(Backend):
    """Decord 0.6 (bundles FFmpeg 4.1): CPU from PyPI; the GPU only with a CUDA build of Decord."""

    name = "decord"

    def __init__(self, on_gpu: bool = False, local_rank: int = 0):
        import decord

        self._decord = decord
        self.on_gpu = on_gpu
        self.ctx = decord.gpu(local_rank) if on_gpu else decord.cpu(0)
        self.errors = (decord.DECORDError,)

    def video(self, data: bytes, threads: int) -> ClipVideo:
        # Decoded at the stored size and resized by torch: Decord's own resize fails on some
        # sizes (seen: 64 -> 48 gives "DECORDArrayCopyFromTo: The size must exactly match").
        reader = self._decord.VideoReader(io.BytesIO(data), ctx=self.ctx, num_threads=threads)
        return _DecordVideo(reader, self.on_gpu)

    def wave(self, data: bytes, sample_rate: int) -> np.ndarray:
        audio = self._decord.AudioReader(io.BytesIO(data), sample_rate=sample_rate, mono=True)
        # AudioReader decodes the whole stream into `_array` on open; `audio[:]` would re-gather it
        # sample by sample through a Python index list (a third of the loader's time on 2 s clips).
        samples = getattr(audio, "_array", None)
        if samples is None:
            samples = audio[:].asnumpy()
        return np.ascontiguousarray(samples.reshape(-1), dtype=np.float32)

    def all_frames(self, data: bytes) -> torch.Tensor:
        # One frame after another until the stream ends: len() can over-report (decord #373).
        video = self._decord.VideoReader(io.BytesIO(data), num_threads=1)
        out = []
        while True:
            try:
                out.append(torch.from_numpy(video.next().asnumpy()))
            except StopIteration:
                break
        if not out:
            raise ValueError("the mp4 holds no frame")
        return torch.stack(out)

    def describe(self) -> str:
        return f"decord {self._decord.__version__} on {'GPU' if self.on_gpu else 'CPU'}"


def decord_has_cuda(local_rank: int = 0) -> str | None:
    """None when this Decord can decode on GPU `local_rank`, else why not (one line)."""
    import decord

    try:
        decord.nd.empty((1,), ctx=decord.gpu(local_rank))
    except Exception as exc:  # Decord raises DECORDError (a plain Exception subclass) without CUDA
        return f"this Decord has no CUDA support ({str(exc).splitlines()[0]})"
    return None


# -- TorchCodec --------------------------------------------------------------------------------


class _TorchCodecVideo:
    def __init__(self, decoder):
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.decoder)

    def key_indices(self) -> list[int]:
        # Used only for the frames-decoded statistic; the method is TorchCodec's own, not yet public.
        keys = getattr(self.decoder, "_get_key_frame_indices", None)
        return [int(k) for k in keys()] if keys is not None else [0]

    def grey(self, wanted: list[int], order: list[int]) -> torch.Tensor:
        frames_NHWC = self.decoder.get_frames_at(wanted).data
        return frames_NHWC[torch.tensor(order, device=frames_NHWC.device), :, :, 0]


class TorchCodecBackend(Backend):
    """TorchCodec with the system's FFmpeg (4 and later): CPU, and NVDEC on an NVIDIA GPU from the
    same wheel."""

    name = "torchcodec"

    def __init__(self, on_gpu: bool = False, local_rank: int = 0):
        from torchcodec.decoders import AudioDecoder, VideoDecoder

        self._video, self._audio = VideoDecoder, AudioDecoder
        self.on_gpu = on_gpu
        self.device = f"cuda:{local_rank}" if on_gpu else "cpu"
        # Undecodable bytes: RuntimeError from FFmpeg ("Could not open input", no stream),
        # ValueError for a missing stream of a kind.
        self.errors = (RuntimeError, ValueError)
        self._fallback_checked = False

    def video(self, data: bytes, threads: int) -> ClipVideo:
        # "exact": frame i is frame i; the scan it needs reads only the small clip's packets.
        decoder = self._video(
            data,
            dimension_order="NHWC",
            num_ffmpeg_threads=threads,
            device=self.device,
            seek_mode="exact",
        )
        return _TorchCodecVideo(decoder) if not self.on_gpu else _GpuVideo(decoder, self)

    def wave(self, data: bytes, sample_rate: int) -> np.ndarray:
        samples = self._audio(data, sample_rate=sample_rate, num_channels=1).get_all_samples().data
        return np.ascontiguousarray(samples.numpy().reshape(-1), dtype=np.float32)

    def all_frames(self, data: bytes) -> torch.Tensor:
        decoder = self._video(data, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
        if len(decoder) < 1:
            raise ValueError("the mp4 holds no frame")
        return decoder.get_frames_in_range(0, len(decoder)).data

    def note_fallback(self, decoder) -> None:
        """Say once, loudly, when NVDEC handed this clip's decoding back to the CPU."""
        if self._fallback_checked:
            return
        self._fallback_checked = True
        status = decoder.cpu_fallback
        if bool(status):
            log.warning("TorchCodec decodes on the CPU, not NVDEC: %s", str(status).splitlines()[0])

    def describe(self) -> str:
        where = "GPU (NVDEC)" if self.on_gpu else "CPU"
        return f"torchcodec {torchcodec_version()} (FFmpeg {torchcodec_ffmpeg()}) on {where}"


class _GpuVideo(_TorchCodecVideo):
    def __init__(self, decoder, backend: TorchCodecBackend):
        super().__init__(decoder)
        self.backend = backend

    def grey(self, wanted: list[int], order: list[int]) -> torch.Tensor:
        out = super().grey(wanted, order)
        self.backend.note_fallback(self.decoder)
        return out


def torchcodec_version() -> str:
    """TorchCodec's version (it must import)."""
    import torchcodec

    return str(torchcodec.__version__)


def torchcodec_ffmpeg() -> str:
    """The FFmpeg release TorchCodec loaded; raises ImportError or RuntimeError saying why it cannot."""
    import torchcodec  # ImportError: the extra is not installed

    # TorchCodec loads the FFmpeg libraries on import and keeps quiet when none load (its image
    # decoders need none); then the major version it records is None.
    major = getattr(torchcodec, "ffmpeg_major_version", None)
    if major is None:
        raise RuntimeError("no FFmpeg libraries (libavcodec, libavformat, ... 4 or later) could be loaded")
    try:  # the full release, for logs and the run's tag; TorchCodec's own helper, not yet public
        from torchcodec._core import get_ffmpeg_library_versions

        return str(get_ffmpeg_library_versions()["ffmpeg_version"])
    except Exception:
        return str(major)


def torchcodec_unusable() -> str | None:
    """None when TorchCodec imports and finds FFmpeg, else why not (one line)."""
    try:
        torchcodec_ffmpeg()
    except ImportError:
        return 'TorchCodec is not installed (pip install -e ".[torchcodec]")'
    except Exception as exc:  # RuntimeError when no FFmpeg loads
        return f"TorchCodec finds no FFmpeg libraries (apt-get install ffmpeg): {str(exc).splitlines()[0]}"
    return None


def usable_decoders() -> list[str]:
    """The decoders this machine has: Decord, and TorchCodec when it imports and finds FFmpeg."""
    return [d for d in DECODERS if d != "torchcodec" or torchcodec_unusable() is None]


def choose_decoder(setting: str) -> str:
    """`data.decoder` resolved to a backend name: `auto` is TorchCodec when usable, else Decord.

    Raises ConfigError naming the key when `torchcodec` is asked for and cannot be used.
    """
    if setting == "decord":
        return "decord"
    why = torchcodec_unusable()
    if setting == "torchcodec":
        if why is not None:
            raise ConfigError(
                f"config key data.decoder=torchcodec cannot be used: {why}; or set data.decoder=decord"
            )
        return "torchcodec"
    if setting != "auto":
        raise ConfigError(
            f"config key data.decoder={setting!r} is invalid: expected decord, torchcodec or auto"
        )
    return _auto_decoder()


@functools.cache
def _auto_decoder() -> str:
    """`auto` resolved and said once per process (the libraries installed do not change)."""
    why = torchcodec_unusable()
    if why is not None:
        log.info("data.decoder=auto: decoding with Decord (%s)", why)
        return "decord"
    log.info("data.decoder=auto: decoding with TorchCodec (FFmpeg %s)", torchcodec_ffmpeg())
    return "torchcodec"


def gpu_unusable(name: str, local_rank: int) -> str | None:
    """None when backend `name` can decode on GPU `local_rank`, else why not (one line)."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if name == "decord":
        why = decord_has_cuda(local_rank)
        return None if why is None else f"{why}; data.decoder=torchcodec decodes on the GPU from PyPI wheels"
    return nvdec_unusable(local_rank)


@functools.cache
def nvdec_unusable(local_rank: int) -> str | None:
    """None when TorchCodec decodes a small H.264 clip with NVDEC on GPU `local_rank`, else why not.

    Tried once per process: a CPU-only TorchCodec build fails on the device, and one without the
    driver's libnvcuvid (a container lacking the `video` capability) falls back to the CPU.
    """
    try:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(_probe_clip(), device=f"cuda:{local_rank}", seek_mode="exact")
        frame = decoder.get_frame_at(0).data
        fallback = decoder.cpu_fallback
    except Exception as exc:  # TorchCodec's RuntimeError/ValueError; ImportError without it
        return f"TorchCodec cannot decode on cuda:{local_rank} ({str(exc).splitlines()[0]})"
    if bool(fallback):
        return f"TorchCodec falls back to the CPU on cuda:{local_rank} ({str(fallback).splitlines()[0]})"
    if frame.device.type != "cuda":
        return f"TorchCodec returned frames on {frame.device.type}, not cuda:{local_rank}"
    return None


def _probe_clip() -> bytes:
    """A 128 x 128 H.264 (yuv420p) mp4 of 4 grey frames, as the shards store clips."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for level in (60, 90, 120, 150):
            image = np.full((128, 128, 3), level, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def decodes_on_gpu(name: str, setting: str, use_gpu: bool, local_rank: int) -> bool:
    """Whether backend `name` decodes on the GPU under `data.decode_device=setting`.

    `gpu` that cannot be honoured is a ConfigError naming the key; `auto` on a GPU run that
    cannot is the CPU, with a warning.
    """
    if setting == "cpu" or (setting == "auto" and not use_gpu):
        return False
    why = gpu_unusable(name, local_rank)
    if why is None:
        return True
    if setting == "gpu":
        raise ConfigError(
            f"config key data.decode_device=gpu cannot be used: {why}; or set data.decode_device=cpu"
        )
    log.warning("decoding on the CPU with %s: %s", name, why)
    return False


def open_backend(name: str, on_gpu: bool = False, local_rank: int = 0) -> Backend:
    """The backend `name` (decord, torchcodec) on the GPU `local_rank` or the CPU."""
    if name == "decord":
        return DecordBackend(on_gpu, local_rank)
    if name == "torchcodec":
        return TorchCodecBackend(on_gpu, local_rank)
    raise ValueError(f"unknown decoder {name!r}: expected one of {', '.join(DECODERS)}")


@dataclass(frozen=True)
class DecoderChoice:
    """Which backend decodes and where: resolved once in the process that builds the loader, and
    opened by each loader worker (a name and a device pickle; an opened backend need not)."""

    name: str
    on_gpu: bool = False
    local_rank: int = 0

    def open(self) -> Backend:
        """The backend, ready to decode."""
        return open_backend(self.name, self.on_gpu, self.local_rank)

    def describe(self) -> str:
        """The backend, its version and device, e.g. for the run's `usvs.decoder` tag."""
        return self.open().describe()


def resolve_decoder(
    decoder: str, decode_device: str, use_gpu: bool = False, local_rank: int = 0
) -> DecoderChoice:
    """`data.decoder` and `data.decode_device` resolved for a process on GPU `local_rank` (when
    `use_gpu`); a setting that cannot be honoured is a ConfigError naming its key."""
    name = choose_decoder(decoder)
    return DecoderChoice(name, decodes_on_gpu(name, decode_device, use_gpu, local_rank), local_rank)
