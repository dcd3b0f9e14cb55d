"""Ray Tune sweeps of training runs (see usvs_dist.tune.space for the sweep file)."""
