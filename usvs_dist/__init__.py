"""usvs_dist: distributed self-supervised pretraining on ultrasound video and narration.

Import-light on purpose: nothing heavy is imported here. The version is the tools' one, kept in
the shard-format contract (`usvs_format`), which `sharding` shares.
"""

from usvs_format import __version__

__all__ = ["__version__"]
