"""The shard-format contract, re-exported for usvs_dist's own modules.

The contract lives in `usvs_format.schema` (a stdlib-only leaf that `sharding` imports too; its
names are listed once, in `usvs_format.__all__`); this module keeps `from usvs_dist.data import
schema` working inside usvs_dist.
"""

from usvs_format import *  # noqa: F403
from usvs_format import __all__  # noqa: F401
