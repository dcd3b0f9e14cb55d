"""Shard stream -> Decord decode -> clip sampling -> batches.

Import-light: this package does not import torch at import time, so `usvs_dist.data.schema`
(the shard-format contract, re-exported from `usvs_format`) stays cheap to import. Use
`usvs_dist.data.pipeline` for the loader.
"""


def __getattr__(name: str):
    """`usvs_dist.data.decode_mp4` (the webdataset handler), imported on first use: torch stays
    out of this package's import."""
    if name == "decode_mp4":
        from usvs_dist.data.handlers import decode_mp4

        return decode_mp4
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
