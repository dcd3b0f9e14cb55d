"""Shard stream -> Decord decode -> clip sampling -> batches.

Import-light: `usvs_dist.data.schema` is the shard-format contract `sharding` imports, so this
package does not import torch at import time. Use `usvs_dist.data.pipeline` for the loader.
"""
