"""usvs_dist: distributed self-supervised pretraining on ultrasound video and narration.

Import-light on purpose: `sharding` imports `usvs_dist.data.schema` and must stay torch-free,
so nothing heavy is imported here.
"""

__version__ = "0.1.0"
