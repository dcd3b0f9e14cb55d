"""The error a bad setting raises in both tools: a usvs_dist config key or a sharding option.

It lives in this shared leaf so that `sharding` (which may not import `usvs_dist`) and
`usvs_dist.config` raise the same class, and one `except ConfigError` catches either.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the full key (or flag), the
    value and what was expected."""
