"""Training: state, step, the per-worker loop for Ray Train, and the `python -m usvs_dist.train` entry."""
