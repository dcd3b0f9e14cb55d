"""A webdataset decode handler for the shards' clips, for readers outside this project's loader.

    import webdataset as wds
    from usvs_dist.data.handlers import Mp4Handler, decode_mp4

    for sample in wds.WebDataset(urls, shardshuffle=False).decode(decode_mp4):
        frames_THWC = sample["mp4"]  # uint8 [T, H, W, 3]
    # or with TorchCodec (`pip install -e ".[torchcodec]"` and the system's FFmpeg):
    wds.WebDataset(urls, shardshuffle=False).decode(Mp4Handler("torchcodec"))

Shapes: T frames (every frame the clip holds, in order), H x W pixels as stored, C = 3 (RGB,
the grey scan repeated: the shards store H.264 in yuv420p, which both decoders return as RGB).
The project's loader decodes a sampled subset of frames instead (`usvs_dist.data.decode`).
"""

from __future__ import annotations

import torch

from usvs_dist.data.backends import Backend, open_backend


class Mp4Handler:
    """webdataset handler: the `mp4` entry's bytes -> uint8 tensor [T, H, W, 3] decoded by
    `decoder` (decord, torchcodec); None for other keys. Picklable: the decoder opens on first use."""

    def __init__(self, decoder: str = "decord"):
        self.decoder = decoder
        self._backend: Backend | None = None

    def __call__(self, key: str, data: bytes) -> torch.Tensor | None:
        """Decode `data` when `key` is an mp4 entry."""
        if key.rsplit(".", 1)[-1].lower() != "mp4":
            return None
        if self._backend is None:
            self._backend = open_backend(self.decoder)
        return self._backend.all_frames(data)

    def __getstate__(self) -> dict:
        return {"decoder": self.decoder, "_backend": None}


def decode_mp4(key: str, data: bytes) -> torch.Tensor | None:
    """webdataset handler: the `mp4` entry's bytes -> uint8 tensor [T, H, W, 3] by Decord; None
    for other keys. Frames are read until the stream ends rather than up to a frame count, which
    Decord can over-report (decord #373)."""
    return Mp4Handler("decord")(key, data)
