"""Benchmarks: a table, then one line of `name=value` ratios (`python -m usvs_dist.bench`)."""
