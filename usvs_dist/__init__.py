"""usvs_dist: distributed self-supervised pretraining on ultrasound video and narration.

Import-light on purpose: nothing heavy is imported here; `load_encoder` (usvs_dist.export) is
imported when first used. The version is the tools' one, kept in the shard-format contract
(`usvs_format`), which `sharding` shares.
"""

from usvs_format import __version__

__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str):
    """`usvs_dist.load_encoder`, imported on first use (torch and safetensors load only then)."""
    if name == "load_encoder":
        from usvs_dist.export.load import load_encoder

        return load_encoder
    raise AttributeError(f"module 'usvs_dist' has no attribute {name!r}")
