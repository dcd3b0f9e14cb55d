"""Decode one WebDataset sample (clip mp4 + json) into training tensors (Decord or TorchCodec:
`usvs_dist.data.backends`).

Shapes: C channels, T frames, H x W pixels, M mel bins, F audio frames.
`ClipDecoder` output per sample: `frames` [T + 1, H, W] uint8 at the stored size (the T clip
frames, then the image frame), `crop` [5] (the clip's crop and flip draw), `intensity` [2] (its
contrast and brightness draw), `wave` [N] (the narration; only when the recipe reads it),
`labels` [T] and `image_label` (-1 when the shard has none), `gaze` [T, 2] and `image_gaze` [2]
(NaN when none), `scan`, `t0`, `__key__`, `__url__`.
torch's `default_collate` stacks them; `BatchFinisher` then crops, flips and resizes each clip
and makes video_BCTHW and image_BCHW floats in [0, 1] with its intensity jitter, and audio_B1MF
log-mel, in one batched operation. Where it runs, and why: `usvs_dist.data.pipeline`, stage 5.
"""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import torch
import torchaudio

from usvs_dist.config import redact
from usvs_dist.config.schema import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.augment import draw_crop, draw_intensity, finish_batch, whole_frame
from usvs_dist.data.backends import Backend, DecoderChoice, open_backend, resolve_decoder

log = logging.getLogger(__name__)
MIN_SAMPLES_FOR_BAD_FRACTION = 50
"""Samples a loader worker decodes before data.max_bad_fraction is enforced."""


class BadSample(ValueError):
    """A sample cannot be decoded into a training example; names the key and what failed."""


def sample_frame_indices(n_frames: int, T: int, rng: random.Random | None) -> list[int]:
    """T indices spread uniformly over n_frames: a random one per segment, or the centres if rng is None."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    out = []
    for k in range(T):
        a, b = n_frames * k / T, n_frames * (k + 1) / T
        pos = rng.uniform(a, b) if rng is not None else (a + b) / 2
        out.append(min(n_frames - 1, int(pos)))
    return out


class MelPower(torch.nn.Module):
    """torchaudio's power mel spectrogram, |X|^2 taken as re^2 + im^2: MelSpectrogram's
    `abs().pow(2)` takes a square root only to undo it (a third of the log-mel's time). Rate, FFT,
    hop, bins and band are the data config's."""

    def __init__(self, cfg: DataConfig):
        super().__init__()
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=None
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_stft=cfg.n_fft // 2 + 1,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[..., N] samples -> [..., n_mels, frames] mel power."""
        return self.mel_scale(torch.view_as_real(self.spectrogram(wave)).square().sum(-1))


def frames_to_decode(keys: list[int], indices: list[int]) -> tuple[list[int], int]:
    """(sorted distinct frames to ask the decoder for, frames it decodes to get them), given the
    clip's key frames.

    Decoders decode forward from the keyframe at or before a wanted frame; Decord seeks back (and
    decodes again) for an index lower than the previous one: asking in sorted order avoids that.
    """
    wanted = sorted(set(indices))
    decoded, position = 0, -1
    for frame in wanted:
        if frame > position:
            start = max((k for k in keys if k <= frame), default=0)
            start = max(start, position + 1) if start <= position else start
            decoded += frame - start + 1
            position = frame
    return wanted, decoded


def has_narration(sample: dict) -> bool:
    """Whether a raw sample's json says its clip has narration (an unreadable json: yes, so that
    the decoder sees the sample and counts it bad rather than it vanishing)."""
    try:
        meta = json.loads(sample[schema.META_KEY])
    except (KeyError, ValueError, TypeError):
        return True
    return not isinstance(meta, dict) or schema.narrated(meta)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_meta(meta: object, classes: int) -> dict:
    """The clip's json checked against the shard contract; raises BadSample saying what is wrong.

    A shard written by another tool, or damaged, must cost one counted sample, not a crash of a
    loader worker (TypeError, IndexError) or labels outside the vocabulary reaching a loss.
    """
    if not isinstance(meta, dict):
        raise BadSample(f"json is a {type(meta).__name__}, expected an object")
    frames = meta.get(schema.META_FRAMES)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise BadSample(f"json {schema.META_FRAMES!r} is not a positive integer")
    for key in (schema.META_T0, schema.META_T1):
        if key in meta and not (_is_number(meta[key]) and math.isfinite(meta[key])):
            raise BadSample(f"json {key!r} is not a finite number")
    if not isinstance(meta.get(schema.META_SCAN), str):
        raise BadSample(f"json {schema.META_SCAN!r} is not a string")
    if not isinstance(meta.get(schema.META_NARRATION, True), bool):
        raise BadSample(f"json {schema.META_NARRATION!r} is not true or false")
    labels = meta.get(schema.META_LABELS)
    if labels is not None:
        if not isinstance(labels, list) or len(labels) < frames:
            raise BadSample(f"json {schema.META_LABELS!r} is not a list of {frames} labels")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < classes for c in labels):
            raise BadSample(
                f"json {schema.META_LABELS!r} holds a label outside the vocabulary's {classes} classes"
            )
    gaze = meta.get(schema.META_GAZE)
    if gaze is not None:
        if not isinstance(gaze, list) or len(gaze) < frames:
            raise BadSample(f"json {schema.META_GAZE!r} is not a list of {frames} points")
        for point in gaze:
            if not (
                isinstance(point, list)
                and len(point) == 2
                and all(_is_number(v) and 0.0 <= v <= 1.0 for v in point)
            ):
                raise BadSample(f"json {schema.META_GAZE!r} holds a point that is not [x, y] in [0, 1]")
    return meta


def read_wave(data: bytes, sample_rate: int, decoder: str = "decord") -> np.ndarray:
    """The clip's narration as mono float samples at `sample_rate`, decoded by `decoder`."""
    return open_backend(decoder).wave(data, sample_rate)


class BatchFinisher:
    """The loader's last stage (stage 5 of `usvs_dist.data.pipeline`, which says where it runs):
    each clip's crop, flip and intensity jitter on its uint8 frames -> float video and image,
    narration -> log-mel."""

    def __init__(self, cfg: DataConfig, device: torch.device | str = "cpu"):
        self.channels, self.size, self.clip_frames = cfg.channels, cfg.frame_size, cfg.num_frames
        self.device = torch.device(device)
        self.mel = MelPower(cfg).to(self.device)

    def __call__(self, batch: dict) -> dict:
        """Complete a collated batch in place of its `frames`, `crop`, `intensity` and `wave`; returns it."""
        crops = [tuple(c) for c in batch.pop("crop").tolist()]
        frames = batch.pop("frames").to(self.device, non_blocking=True)
        intensity = batch.pop("intensity").to(self.device, non_blocking=True)
        video_BTHW, image_B1HW = finish_batch(frames, crops, intensity, self.size, self.clip_frames)
        B, C, T, S = video_BTHW.shape[0], self.channels, self.clip_frames, self.size
        # expand + contiguous copies only for C > 1 (grey repeated for RGB encoders).
        batch["video"] = video_BTHW.unsqueeze(1).expand(B, C, T, S, S).contiguous()
        batch["image"] = image_B1HW.expand(B, C, S, S).contiguous()
        if "wave" in batch:  # absent when the recipe reads no narration
            wave_BN = batch.pop("wave").to(self.device, non_blocking=True)
            batch["audio"] = torch.log(self.mel(wave_BN.float()) + 1e-6).unsqueeze(1)
        return batch


class TarErrors:
    """webdataset handler: a tar error is logged and counted as a bad sample of `decoder`, then skipped."""

    def __init__(self, decoder: ClipDecoder):
        self.decoder = decoder

    def __call__(self, exc: Exception) -> bool:
        where = next((a for a in reversed(exc.args) if isinstance(a, str) and ".tar" in a), "?")
        self.decoder.seen += 1
        self.decoder.count_bad(f"unreadable tar data ({str(exc.args[0]).splitlines()[0]})", "?", where)
        return True


def device_fault(exc: BaseException) -> bool:
    """Whether an error decoding on the GPU is the device's (out of memory, CUDA, NVDEC) rather
    than the clip's."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or any(
        word in text for word in ("CUDA", "cuda", "NVDEC", "nvdec", "cuvid", "NPP")
    )


class ClipDecoder:
    """Picklable sample -> tensors map; the worker id and the decoder backend are opened on first
    use, inside the loader worker (random draws come from `sample_rng`, one per sample)."""

    def __init__(
        self,
        cfg: DataConfig,
        clip_seconds: float,
        rank: int,
        train: bool,
        epoch: int = 0,
        *,
        decoder: DecoderChoice | None = None,
        classes: int = len(schema.PLANES),
        audio: bool = True,
    ):
        """`decoder`: the resolved `data.decoder` and device (None: `data.decoder` on the CPU)."""
        self.cfg = cfg
        self.classes = classes
        """Size of the shards' label vocabulary (index.json), the range labels are checked against."""
        self.audio = audio
        """Read the narration (clips without one are bad samples); False: no `wave` in the output."""
        self.samples = round(clip_seconds * cfg.sample_rate)
        self.rank = rank
        self.train = train
        self.decoder = decoder or resolve_decoder(cfg.decoder, "cpu")
        self.epoch = epoch
        self.bad = 0
        self.seen = 0
        self.frames_decoded = 0
        self.frames_used = 0
        self.stored_shape: tuple[int, ...] | None = None
        self._ready = False
        self._backend: Backend | None = None
        self._errors: tuple[type[BaseException], ...] = ()

    def _setup(self) -> None:
        info = torch.utils.data.get_worker_info()
        self.worker = info.id if info is not None else 0
        self._backend = self.decoder.open()
        self._errors = (
            BadSample,
            KeyError,
            ValueError,
            TypeError,
            IndexError,
            RuntimeError,
            *self._backend.errors,
        )
        self._ready = True

    def sample_rng(self, key: str) -> random.Random | None:
        """Frame jitter and augmentation draws of one sample: a function of (seed, epoch, key), so
        a resumed stream draws what the uninterrupted one would; None when not training."""
        return random.Random(f"{self.cfg.seed}-{self.epoch}-{key}") if self.train else None

    def count_bad(self, reason: str, key: str, url: str) -> None:
        """Log and count one skipped sample; stop the run above data.max_bad_fraction."""
        self.bad += 1
        url = redact(url)  # logs travel: no token of a pipe: command or a presigned URL
        log.warning(
            "skipped sample %s from %s: %s (%d of %d skipped in this worker)",
            key,
            url,
            reason,
            self.bad,
            self.seen,
        )
        if self.seen >= MIN_SAMPLES_FOR_BAD_FRACTION and self.bad > self.cfg.max_bad_fraction * self.seen:
            raise RuntimeError(
                f"{self.bad} of {self.seen} samples could not be decoded, above "
                f"data.max_bad_fraction={self.cfg.max_bad_fraction}; last: shard {url}, key {key}: {reason}"
            )

    def __call__(self, sample: dict) -> dict | None:
        if not self._ready:
            self._setup()
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        self.seen += 1
        try:
            return self._decode(sample)
        except self._errors as exc:
            if self._backend.on_gpu and device_fault(exc):
                raise  # the GPU's fault, not the sample's: never counted as bad data
            self.count_bad(str(exc).splitlines()[0], key, url)
            return None

    def _decode(self, sample: dict) -> dict:
        cfg = self.cfg
        for k in (schema.VIDEO_KEY, schema.META_KEY):
            if k not in sample:
                raise BadSample(f"missing key {k!r}")
        try:
            meta = check_meta(json.loads(sample[schema.META_KEY]), self.classes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSample(f"json is not valid JSON ({type(exc).__name__})") from None
        if self.audio and not schema.narrated(meta):
            raise BadSample("the clip has no narration, which this recipe reads")
        data = sample[schema.VIDEO_KEY]
        video = self._backend.video(data, cfg.decode_threads)
        # Decord's len() can over-report and hang get_batch (decord #373): trust the json's count too.
        n = min(len(video), int(meta[schema.META_FRAMES]))
        rng = self.sample_rng(sample.get("__key__", ""))
        idx = sample_frame_indices(n, cfg.num_frames, rng)
        image_idx = rng.randrange(n) if rng is not None else n // 2
        wanted, decoded = frames_to_decode(video.key_indices(), idx + [image_idx])
        self.frames_decoded += decoded
        self.frames_used += len(wanted)
        # Grey lives in the first channel: only it, of only the used frames, is kept. Decoded on
        # the GPU, the frames stay there and reach the batch finisher without a host copy.
        grey_NHW = video.grey(wanted, [wanted.index(i) for i in idx + [image_idx]])
        # Frames cross to the finisher at their stored size, stacked: one size per stream.
        shape = tuple(grey_NHW.shape[-2:])
        self.stored_shape = self.stored_shape or shape
        if shape != self.stored_shape:
            raise BadSample(
                f"frames are {shape[0]}x{shape[1]}, this stream's earlier clips "
                f"{self.stored_shape[0]}x{self.stored_shape[1]} (the shards of one index share one size)"
            )
        # The crop and flip are drawn here (from the clip's sector) and applied by BatchFinisher,
        # where the batch is consumed; the clip and its image frame share them, so the modalities
        # stay aligned.
        augment = rng is not None and cfg.augment.enabled
        crop = draw_crop(grey_NHW, cfg.augment, rng) if augment else whole_frame(grey_NHW)
        intensity = draw_intensity(cfg.augment, rng if augment else None)

        out: dict = {}
        if self.audio:
            wave_N = torch.from_numpy(self._backend.wave(data, cfg.sample_rate))[: self.samples]
            if len(wave_N) < self.samples:
                raise BadSample(f"audio has {len(wave_N)} samples, the clip needs {self.samples}")
            out["wave"] = wave_N

        labels = meta.get(schema.META_LABELS)
        gaze = meta.get(schema.META_GAZE)
        return {
            **out,
            "frames": grey_NHW,
            "crop": torch.tensor(crop),
            "intensity": torch.tensor(intensity, dtype=torch.float32),
            "labels": torch.tensor([labels[i] for i in idx] if labels else [-1] * len(idx)),
            "image_label": torch.tensor(labels[image_idx] if labels else -1),
            "gaze": torch.tensor([gaze[i] for i in idx], dtype=torch.float32)
            if gaze
            else torch.full((len(idx), 2), float("nan")),
            "image_gaze": torch.tensor(gaze[image_idx], dtype=torch.float32)
            if gaze
            else torch.full((2,), float("nan")),
            "scan": meta[schema.META_SCAN],
            "t0": float(meta[schema.META_T0]),
            "__key__": sample.get("__key__", ""),
            "__url__": sample.get("__url__", ""),
        }
