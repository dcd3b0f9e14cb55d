"""Load a RootConfig: embedded defaults <- YAML file <- `section.key=value` overrides.

OmegaConf does the merging and the type checks against the dataclass tree (unknown keys, values
of the wrong type and choices outside a field's `Literal` are refused); NaN and infinite floats
are refused anywhere in the tree; each section's `__post_init__` then checks ranges. Every
failure becomes one ConfigError line naming the file or the full key. The keys whose values came
from `${oc.env:...}` are recorded on the returned config, so what is logged can show the
expression instead (config.redact).

Keys are set from outside in one way, `apply_overrides`: the CLI dotlist (load_config, which
merges it before the whole tree is validated once), a Tune trial's parameters and evaluation's
`eval.*`/`data.*` overrides. `from_tree` builds any other typed section tree (a sweep file's
`sweep:` section) with the same checks and messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from usvs_dist.config.redact import env_interpolations, env_sources, remember_env_sources
from usvs_dist.config.schema import ConfigError, RootConfig, Section, choice_fields, invalid, one_of

T = TypeVar("T", bound=Section)


def _allowed(exc: OmegaConfBaseException, schema: type) -> tuple[Any, ...] | None:
    """The values of the `Literal` a refused value fell outside, or None for other errors."""
    if not isinstance(exc, ValidationError):
        return None
    if dataclasses.is_dataclass(exc.object_type):
        return choice_fields(exc.object_type).get(str(exc.key), (None, False))[0]
    # An item of a list field (eval.plane_splits[1]): find the field from the key.
    *parents, leaf = re.sub(r"\[\d+\]$", "", str(exc.full_key or "")).split(".")
    for part in parents:
        schema = get_type_hints(schema).get(part) if dataclasses.is_dataclass(schema) else None
    return choice_fields(schema).get(leaf, (None, False))[0] if dataclasses.is_dataclass(schema) else None


def unknown_key(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """`unknown config key 'a.b_typo': did you mean a.b?` (difflib's nearest of `valid`, the
    section's field names), else the valid keys listed."""
    section, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=1)
    full = [f"{section}.{name}" if section else name for name in (close or valid)]
    return f"unknown config key '{key}': " + (
        f"did you mean {full[0]}?" if close else f"expected one of {', '.join(full)}"
    )


def _one_line(exc: OmegaConfBaseException, source: str, schema: type[Section] = RootConfig) -> ConfigError:
    key = ".".join(k for k in (schema.KEY, str(getattr(exc, "full_key", None) or "")) if k) or "?"
    where = f"{source}: " if source else ""
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError | ConfigAttributeError):
        owner = getattr(exc, "object_type", None)
        if dataclasses.is_dataclass(owner):
            return ConfigError(where + unknown_key(key, [f.name for f in dataclasses.fields(owner)]))
        return ConfigError(f"{where}unknown config key '{key}' ({msg})")
    allowed = _allowed(exc, schema)
    if allowed is not None:
        return ConfigError(f"{where}{invalid(key, exc.value, one_of(allowed))}")
    return ConfigError(f"{where}invalid value for config key '{key}' ({msg})")


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
    # The file and the dotlist are validated together, once: an override may fix what the file
    # alone would fail, and may replace a file value read from the environment.
    return _to_config(_merge_overrides(merged, overrides or []))


def apply_overrides(cfg: RootConfig, overrides: dict[str, Any] | list[str]) -> RootConfig:
    """`cfg` with `section.key` values set, validated like any config (ConfigError naming the key).

    `overrides`: `a.b=c` strings, parsed as the CLI parses them, or {`a.b`: value} (a Tune
    trial's parameters). Keys `cfg` took from the environment still count as such unless set here.
    """
    merged = _merge_overrides(OmegaConf.structured(cfg), overrides)
    keys = [item.partition("=")[0] for item in _dotlist(overrides)]
    env = {
        k: v for k, v in env_sources(cfg).items() if not any(k == o or k.startswith(f"{o}.") for o in keys)
    }
    return _to_config(merged, env)


def _merge_overrides(merged: DictConfig, overrides: dict[str, Any] | list[str]) -> DictConfig:
    """The (unvalidated) tree with each override merged in, in order; ConfigError names the override."""
    for item in _dotlist(overrides):
        key, sep, _ = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _one_line(exc, f"override {item!r}") from exc
    return merged


def _dotlist(overrides: dict[str, Any] | list[str]) -> list[str]:
    """`key=value` strings: a dict's values are written out and parsed back as the CLI's are (which
    also turns the numpy scalars a search may yield into plain YAML values)."""
    if isinstance(overrides, dict):
        return [f"{key}={value}" for key, value in overrides.items()]
    return list(overrides)


def _to_config(merged: Any, env: dict[str, Any] | None = None) -> RootConfig:
    """The validated RootConfig of a merged tree, with the keys it took from the environment."""
    try:
        sources = {**(env or {}), **env_interpolations(OmegaConf.to_container(merged, resolve=False))}
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "config") from exc
    return remember_env_sources(_build(merged, RootConfig, "config"), sources)


def _build(merged: Any, schema: type[T], source: str) -> T:
    """The `schema` object of a merged tree: non-finite floats refused, then every section's checks."""
    try:
        _refuse_non_finite(OmegaConf.to_container(merged, resolve=True), schema.KEY)
        built = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, source, schema) from exc
    assert isinstance(built, schema)
    return built


def from_tree(schema: type[T], tree: Any, source: str = "") -> T:
    """A validated `schema` section from a plain tree (a YAML mapping); errors name `schema`'s key.

    The same checks as load_config's: unknown keys, types, choices, non-finite floats, ranges.
    `source` (a file name, say) starts OmegaConf's error lines when given.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), tree if tree is not None else {})
    except OmegaConfBaseException as exc:
        raise _one_line(exc, source, schema) from exc
    return _build(merged, schema, source)


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
        raise invalid(key, tree, "a finite number")


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
