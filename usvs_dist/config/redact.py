"""Secrets out of what a run records: MLflow params and tags, config artifacts, log lines.

The run itself uses the real values; only copies meant to be read by others are redacted:
- URL credentials, `scheme://user:password@host` -> `scheme://<redacted>@host`;
- URL query strings, which carry presigned URLs' signatures (`?X-Amz-Signature=...`) and
  tokens -> `?<redacted>`;
- `pipe:` commands (shard URLs that run a shell command, which may hold a token or a signed
  URL) -> `pipe:` and the first 12 hex digits of the command's sha256, so equal commands stay
  recognisably equal;
- values taken from the environment by OmegaConf (`${oc.env:NAME}`, directly or through a key
  that was) -> the unresolved expression itself. Environment variables are where secrets are
  usually put, and the expression says where the value came from: a redacted config loads
  again wherever the variable is set. load_config and from_dict record which keys these are,
  from the unresolved tree, on the RootConfig they return (`env_sources`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

REDACTED = "<redacted>"
ENV_ATTR = "_env_sources"
"""RootConfig attribute (not a field: it is no setting) holding {flat key: unresolved value}."""

_SCHEME = r"\b[A-Za-z][A-Za-z0-9+.-]*://"
# Greedy up to the authority's last '@': a password may hold an unencoded '@'.
_USERINFO = re.compile(rf"({_SCHEME})[^/?#\s'\"]+@")
_QUERY = re.compile(rf"({_SCHEME}[^?#\s'\"]*)\?[^#\s'\"]*")
_ENV_RESOLVER = "${oc.env:"
_PIPE_DIGEST = re.compile(r"pipe:[0-9a-f]{12}")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.\[\]]*)\}")


def redact(value: Any) -> Any:
    """`value` with URL credentials, URL query strings and `pipe:` commands redacted.

    Strings anywhere inside lists, tuples and dicts are redacted too; other values pass unchanged.
    """
    if isinstance(value, str):
        if value.startswith("pipe:") and not _PIPE_DIGEST.fullmatch(value):  # not redacted twice
            return "pipe:" + hashlib.sha256(value[len("pipe:") :].encode()).hexdigest()[:12]
        return _QUERY.sub(rf"\1?{REDACTED}", _USERINFO.sub(rf"\1{REDACTED}@", value))
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def redacted(cfg: Any) -> dict[str, Any]:
    """The config tree as plain dicts for logging: env-interpolated values put back as their
    `${oc.env:...}` expression, then every string redacted (see `redact`)."""
    tree = dataclasses.asdict(cfg)
    for key, raw in env_sources(cfg).items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = raw
    return redact(tree)


def env_sources(cfg: Any) -> dict[str, Any]:
    """{flat key: unresolved value} of the keys `cfg` took from the environment (may be empty)."""
    return dict(getattr(cfg, ENV_ATTR, {}))


def remember_env_sources(cfg: Any, sources: dict[str, Any]) -> Any:
    """Attach `sources` (see env_sources) to `cfg`; returns `cfg`."""
    setattr(cfg, ENV_ATTR, dict(sources))
    return cfg


def env_interpolations(raw: dict[str, Any]) -> dict[str, Any]:
    """{flat key: unresolved value} of the values in `raw` that read the environment.

    `raw` is the unresolved tree (OmegaConf.to_container(..., resolve=False)); keys are flattened
    as `flatten` does (lists are one value). A value that interpolates such a key (`${data.shards}`)
    reads the environment too.
    """
    leaves = dict(_interpolated_leaves(raw, ""))
    env = {k for k, v in leaves.items() if any(_ENV_RESOLVER in s for s in _strings(v))}
    grew = True
    while grew:  # follow `${other.key}` references to keys already known to come from the env
        grew = False
        for key, value in leaves.items():
            refs = {r for s in _strings(value) for r in _REFERENCE.findall(s)}
            if key not in env and any(_overlaps(r, k) for r in refs for k in env):
                env.add(key)
                grew = True
    return {k: leaves[k] for k in sorted(env)}


def _overlaps(ref: str, key: str) -> bool:
    return ref == key or ref.startswith(key + ".") or key.startswith(ref + ".")


def _interpolated_leaves(tree: dict[str, Any], prefix: str):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _interpolated_leaves(value, f"{name}.")
        elif any("${" in s for s in _strings(value)):
            yield name, value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []
