"""A webdataset decode handler for the shards' clips, for readers outside this project's loader.

    import webdataset as wds
    from usvs_dist.data.handlers import decode_mp4

    for sample in wds.WebDataset(urls, shardshuffle=False).decode(decode_mp4):
        frames_THWC = sample["mp4"]  # uint8 [T, H, W, 3]

Shapes: T frames (every frame the clip holds, in order), H x W pixels as stored, C = 3 (RGB,
the grey scan repeated: the shards store H.264 in yuv420p, which Decord returns as RGB).
The project's loader decodes a sampled subset of frames instead (`usvs_dist.data.decode`).
"""

from __future__ import annotations

import io

import decord
import torch


def decode_mp4(key: str, data: bytes) -> torch.Tensor | None:
    """webdataset handler: the `mp4` entry's bytes -> uint8 tensor [T, H, W, 3]; None for other keys.

    Frames are read one after another until the stream ends rather than up to len(video),
    which can over-report (decord #373).
    """
    if key.rsplit(".", 1)[-1].lower() != "mp4":
        return None
    video = decord.VideoReader(io.BytesIO(data), num_threads=1)
    frames = []
    while True:
        try:
            frames.append(torch.from_numpy(video.next().asnumpy()))
        except StopIteration:
            break
    if not frames:
        raise ValueError("the mp4 holds no frame")
    return torch.stack(frames)
