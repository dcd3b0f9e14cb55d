"""Decode one WebDataset sample (clip mp4 + json) with Decord into training tensors.

Shapes: C channels, T frames, H x W pixels, M mel bins, F audio frames.
Output per sample: video_CTHW float in [0, 1], image_CHW, audio_1MF log-mel, labels_T (-1 when
the shard has none), gaze_T2 (NaN when none), meta.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass

import decord
import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.dlpack
import torchaudio

from usvs_dist.config.schema import DataConfig
from usvs_dist.data import schema

log = logging.getLogger(__name__)
MIN_SAMPLES_FOR_BAD_FRACTION = 50
"""Samples a loader worker decodes before data.max_bad_fraction is enforced."""


class BadSample(ValueError):
    """A sample cannot be decoded into a training example; names the key and what failed."""


def sample_frame_indices(n_frames: int, T: int, rng: random.Random | None) -> list[int]:
    """T indices spread uniformly over n_frames: a random one per segment, or the centres if rng is None."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    edges = np.linspace(0, n_frames, T + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        pos = rng.uniform(a, b) if rng is not None else (a + b) / 2
        out.append(min(n_frames - 1, int(pos)))
    return out


@dataclass
class DecodeContext:
    """Where Decord decodes; resolved once per loader worker."""

    ctx: object
    on_gpu: bool


def resolve_decode_context(setting: str, use_gpu: bool, local_rank: int) -> DecodeContext:
    """Pick Decord's context from `data.decode_device`; GPU needs a Decord built with CUDA."""
    want_gpu = setting == "gpu" or (setting == "auto" and use_gpu and torch.cuda.is_available())
    if not want_gpu:
        return DecodeContext(decord.cpu(0), False)
    try:
        decord.nd.empty((1,), ctx=decord.gpu(local_rank))
    except Exception as exc:  # Decord raises DECORDError (a plain Exception subclass) without CUDA
        if setting == "gpu":
            raise ValueError(
                f"data.decode_device=gpu but Decord cannot use the GPU ({exc}); "
                "build Decord with CUDA or set data.decode_device=cpu"
            ) from exc
        log.warning(
            "decoding on CPU: this Decord has no CUDA support (%s); a CUDA build of Decord "
            "decodes on the GPU",
            str(exc).splitlines()[0],
        )
        return DecodeContext(decord.cpu(0), False)
    return DecodeContext(decord.gpu(local_rank), True)


class ClipDecoder:
    """Picklable sample -> tensors map; per-worker RNG and mel transform are made on first use."""

    def __init__(
        self,
        cfg: DataConfig,
        clip_seconds: float,
        rank: int,
        train: bool,
        use_gpu: bool = False,
        local_rank: int = 0,
        epoch: int = 0,
    ):
        self.cfg = cfg
        self.samples = round(clip_seconds * cfg.sample_rate)
        self.rank = rank
        self.train = train
        self.use_gpu = use_gpu
        self.local_rank = local_rank
        self.epoch = epoch
        self.bad = 0
        self.seen = 0
        self._rng: random.Random | None = None
        self._mel: torchaudio.transforms.MelSpectrogram | None = None
        self._ctx: DecodeContext | None = None

    def _setup(self) -> None:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        self.worker = worker
        # One stream per (seed, rank, worker, starting epoch): ranks, workers and resumed runs
        # draw different frames.
        self._rng = random.Random(f"{self.cfg.seed}-{self.rank}-{worker}-{self.epoch}")
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.cfg.sample_rate,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            n_mels=self.cfg.n_mels,
            f_min=self.cfg.f_min,
            f_max=self.cfg.f_max,
        )
        self._ctx = resolve_decode_context(self.cfg.decode_device, self.use_gpu, self.local_rank)

    def __call__(self, sample: dict) -> dict | None:
        if self._mel is None:
            self._setup()
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        self.seen += 1
        try:
            return self._decode(sample)
        except (BadSample, decord.DECORDError, KeyError, ValueError, RuntimeError) as exc:
            self.bad += 1
            reason = str(exc).splitlines()[0]
            log.warning(
                "skipped sample %s from %s: %s (%d of %d skipped in this worker)",
                key,
                url,
                reason,
                self.bad,
                self.seen,
            )
            # A resampled stream never ends: without this, all-bad shards would loop forever.
            if self.seen >= MIN_SAMPLES_FOR_BAD_FRACTION and self.bad > self.cfg.max_bad_fraction * self.seen:
                raise RuntimeError(
                    f"{self.bad} of {self.seen} samples could not be decoded, above "
                    f"data.max_bad_fraction={self.cfg.max_bad_fraction}; last: shard {url}, "
                    f"key {key}: {reason}"
                ) from exc
            return None

    def _decode(self, sample: dict) -> dict:
        cfg = self.cfg
        for k in (schema.VIDEO_KEY, schema.META_KEY):
            if k not in sample:
                raise BadSample(f"missing key {k!r}")
        meta = json.loads(sample[schema.META_KEY])
        data = sample[schema.VIDEO_KEY]
        # Decoded at the stored size and resized by torch: Decord's own resize fails on some
        # sizes (seen: 64 -> 48 gives "DECORDArrayCopyFromTo: The size must exactly match").
        video = decord.VideoReader(io.BytesIO(data), ctx=self._ctx.ctx, num_threads=cfg.decode_threads)
        # len(video) can over-report and hang get_batch (decord #373): trust the json's count too.
        n = min(len(video), int(meta[schema.META_FRAMES]))
        rng = self._rng if self.train else None
        idx = sample_frame_indices(n, cfg.num_frames, rng)
        image_idx = rng.randrange(n) if rng is not None else n // 2
        frames = video.get_batch(idx + [image_idx])
        # On a CUDA Decord the frames stay on the GPU and are handed to torch without a copy.
        frames_THWC = (
            torch.utils.dlpack.from_dlpack(frames.to_dlpack())
            if self._ctx.on_gpu
            else torch.from_numpy(frames.asnumpy())
        )
        grey_THW = frames_THWC[..., 0].float().div_(255.0)
        if grey_THW.shape[-2:] != (cfg.frame_size, cfg.frame_size):
            grey_THW = F.interpolate(
                grey_THW.unsqueeze(1),
                size=(cfg.frame_size, cfg.frame_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            ).squeeze(1)
        clip_CTHW = grey_THW[:-1].unsqueeze(0).expand(cfg.channels, -1, -1, -1).contiguous()
        image_CHW = grey_THW[-1].unsqueeze(0).expand(cfg.channels, -1, -1).contiguous()

        audio = decord.AudioReader(io.BytesIO(data), sample_rate=cfg.sample_rate, mono=True)
        wave_N = torch.from_numpy(audio[:].asnumpy()).reshape(-1)[: self.samples]
        if len(wave_N) < self.samples:
            raise BadSample(f"audio has {len(wave_N)} samples, the clip needs {self.samples}")
        mel_1MF = torch.log(self._mel(wave_N.float()) + 1e-6).unsqueeze(0)

        labels = meta.get(schema.META_LABELS)
        gaze = meta.get(schema.META_GAZE)
        return {
            "video": clip_CTHW,
            "image": image_CHW,
            "audio": mel_1MF,
            "labels": torch.tensor([labels[i] for i in idx] if labels else [-1] * len(idx)),
            "image_label": torch.tensor(labels[image_idx] if labels else -1),
            "gaze": torch.tensor([gaze[i] for i in idx], dtype=torch.float32)
            if gaze
            else torch.full((len(idx), 2), float("nan")),
            "scan": meta[schema.META_SCAN],
            "t0": float(meta[schema.META_T0]),
            "bad_samples": self.bad,
            "worker": self.worker,
        }
