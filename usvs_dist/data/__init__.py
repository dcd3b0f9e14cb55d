"""Shard stream -> Decord decode -> clip sampling -> batches.

Import-light: this package does not import torch at import time, so `usvs_dist.data.schema`
(the shard-format contract, re-exported from `usvs_format`) stays cheap to import. Use
`usvs_dist.data.pipeline` for the loader.
"""
