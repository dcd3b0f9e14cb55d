"""The only code that touches process groups: collectives, the DeepSpeed engine, Ray adapters.

Import `usvs_dist.dist.collectives` from losses; `engine` (DeepSpeed) and `ray_context` (Ray) are
imported only by train/.
"""
