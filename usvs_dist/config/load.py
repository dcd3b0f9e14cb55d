"""Load a RootConfig: embedded defaults <- YAML file <- `section.key=value` overrides.

OmegaConf does the merging and the type checks against the dataclass tree (unknown keys and
values of the wrong type are refused); NaN and infinite floats are refused anywhere in the tree;
each section's `__post_init__` then checks ranges. Every failure becomes one ConfigError line
naming the file or the full key. The keys whose values came from `${oc.env:...}` are recorded on
the returned config, so what is logged can show the expression instead (config.redact).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from usvs_dist.config.redact import env_interpolations, remember_env_sources
from usvs_dist.config.schema import ConfigError, RootConfig


def _one_line(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError | ConfigAttributeError):
        return ConfigError(f"{source}: unknown config key '{key}' ({msg})")
    return ConfigError(f"{source}: invalid value for config key '{key}' ({msg})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RootConfig:
    """Build and validate the run's config; raises ConfigError naming the offending key."""
    merged = OmegaConf.structured(RootConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (expected a YAML file)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections at top level")
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as exc:
            raise _one_line(exc, str(path)) from exc
    for item in overrides or []:
        key, sep, _ = item.partition("=")
        if not sep or not key or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _one_line(exc, f"override {item!r}") from exc
    return _to_config(merged)


def _to_config(merged: Any, env: dict[str, Any] | None = None) -> RootConfig:
    """The validated RootConfig of a merged tree, with the keys it took from the environment."""
    try:
        sources = {**(env or {}), **env_interpolations(OmegaConf.to_container(merged, resolve=False))}
        _refuse_non_finite(OmegaConf.to_container(merged, resolve=True), "")
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "config") from exc
    assert isinstance(cfg, RootConfig)
    return remember_env_sources(cfg, sources)


def _refuse_non_finite(tree: Any, key: str) -> None:
    """ConfigError for the first NaN or infinite float anywhere in the (resolved) tree.

    One check for every float field, before the sections' range checks: NaN fails no comparison
    (so `x <= limit` style checks pass it) and inf passes every lower bound.
    """
    if isinstance(tree, dict):
        for name, value in tree.items():
            _refuse_non_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for k, value in enumerate(tree):
            _refuse_non_finite(value, f"{key}[{k}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"config key {key}={tree!r} is invalid: expected a finite number")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain nested dicts (for YAML dumps and Ray's train_loop_config)."""
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any], env: dict[str, Any] | None = None) -> RootConfig:
    """Rebuild a validated RootConfig from `to_dict` output (inside Ray workers).

    `env`: the env_sources of the config `tree` was made from (to_dict resolves them away).
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RootConfig), tree)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "config") from exc
    return _to_config(merged, env)


def to_yaml(cfg: RootConfig | dict[str, Any]) -> str:
    """The resolved config (or a tree such as config.redacted's) as YAML, as saved with runs."""
    return yaml.safe_dump(cfg if isinstance(cfg, dict) else to_dict(cfg), sort_keys=False)


def flatten(tree: dict[str, Any] | RootConfig, prefix: str = "") -> dict[str, Any]:
    """`{"data.batch_size": 8, ...}`: the flattened form MLflow takes as params."""
    if dataclasses.is_dataclass(tree):
        tree = to_dict(tree)
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
