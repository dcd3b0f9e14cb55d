"""Load a RootConfig: embedded defaults <- YAML file <- `section.key=value` overrides.

OmegaConf does the merging and the type checks against the dataclass tree (unknown keys and
values of the wrong type are refused); each section's `__post_init__` then checks ranges.
Every failure becomes one ConfigError line naming the file or the full key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

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
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "config") from exc
    assert isinstance(cfg, RootConfig)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config tree as plain nested dicts (for YAML dumps and Ray's train_loop_config)."""
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any]) -> RootConfig:
    """Rebuild a validated RootConfig from `to_dict` output (inside Ray workers)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), tree))
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "config") from exc
    assert isinstance(cfg, RootConfig)
    return cfg


def to_yaml(cfg: RootConfig) -> str:
    """The resolved config as YAML, the artifact saved with every run."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


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
