"""Producer side of usvs_dist: phantom scans, scan -> clip -> WebDataset shards, inspection.

Torch is never used here; the only thing shared with the trainer is the shard-format contract
in `usvs_format`: nothing of `usvs_dist` is imported.
"""
