"""A sweep file: the base training config, the search space over config keys, and the search.

```yaml
sweep:
  name: sweep-usvs2020            # MLflow parent run and Tune experiment name
  search: random                  # grid | random | optuna (when installed)
  num_samples: 3                  # trials (random, optuna); repeats of the grid (grid)
  metric: eval/retrieval/v2a_r1   # what trials are compared on (loss: the fallback)
  mode: max
  max_concurrent_trials: 1
  trial_cpus: 1                   # CPUs a trial's driver holds (its workers reserve their own)
  asha: {grace_period: 4, reduction_factor: 2}   # or null: no early stopping
  space:
    objective.temperature: {type: loguniform, low: 0.03, high: 0.3}
    objective.self_paced.schedule: {type: choice, values: [linear, cosine]}
base: {...}                       # any training config (the same keys as configs/*.yaml)
```
Every key is checked before a trial starts: it must be a config key, its range non-empty, and
the recipe must read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from usvs_dist.config import ConfigError, RootConfig, env_sources, flatten, from_dict, to_dict
from usvs_dist.losses import check_objective, recipe_reads

SEARCHES = ("grid", "random", "optuna")
TYPES = ("loguniform", "uniform", "choice", "grid", "randint")


@dataclass
class Sweep:
    """A validated sweep."""

    name: str
    search: str
    num_samples: int
    metric: str
    mode: str
    max_concurrent_trials: int
    asha: dict | None
    space: dict[str, dict[str, Any]]
    base: RootConfig
    trial_cpus: float = 1.0


def _check_param(key: str, spec: Any, base: RootConfig, known: set[str]) -> None:
    where = f"sweep.space.{key}"
    if key not in known:
        raise ConfigError(f"{where}: {key} is not a config key")
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ConfigError(f"{where}: expected {{type: one of {', '.join(TYPES)}, ...}}, got {spec!r}")
    kind = spec["type"]
    if kind in ("choice", "grid"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list `values`")
    else:
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, int | float) or not isinstance(high, int | float) or not low < high:
            raise ConfigError(f"{where}: the range [{low}, {high}] is empty (need low < high)")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if not recipe_reads(base.objective, key):
        raise ConfigError(
            f"{where}: recipe {base.objective.recipe!r} does not use {key}; sweeping it changes nothing"
        )


def with_params(base: RootConfig, params: dict[str, Any]) -> RootConfig:
    """The base config with `section.key` values set (validated like any config).

    Keys the base took from the environment still count as such unless a param sets them.
    """
    tree = OmegaConf.merge(
        OmegaConf.create(to_dict(base)), OmegaConf.from_dotlist([f"{k}={v}" for k, v in params.items()])
    )
    env = {k: v for k, v in env_sources(base).items() if k not in params}
    return from_dict(OmegaConf.to_container(tree), env)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; ConfigError names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    sweep, base_tree = doc.get("sweep"), doc.get("base", {})
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: expected a `sweep:` section")
    unknown = set(doc) - {"sweep", "base"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)} (expected sweep, base)")
    try:
        base = from_dict(base_tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from exc
    check_objective(base.objective)
    search = sweep.get("search", "random")
    if search not in SEARCHES:
        raise ConfigError(f"{path}: sweep.search={search!r}: expected one of {', '.join(SEARCHES)}")
    space = sweep.get("space") or {}
    if not space:
        raise ConfigError(f"{path}: sweep.space is empty")
    known = set(flatten(base))
    for key, spec in space.items():
        _check_param(key, spec, base, known)
    if search != "grid" and any(s["type"] == "grid" for s in space.values()):
        raise ConfigError(f"{path}: grid values need sweep.search=grid")
    mode = sweep.get("mode", "max")
    if mode not in ("min", "max"):
        raise ConfigError(f"{path}: sweep.mode={mode!r}: expected min or max")
    num_samples = int(sweep.get("num_samples", 1))
    if num_samples < 1:
        raise ConfigError(f"{path}: sweep.num_samples must be >= 1")
    metric = sweep.get("metric", "loss")
    if metric.startswith("eval/") and not base.eval.every:
        raise ConfigError(f"{path}: sweep.metric={metric} needs base.eval.every > 0 (periodic evaluation)")
    return Sweep(
        name=sweep.get("name") or path.stem,
        search=search,
        num_samples=num_samples,
        metric=metric,
        mode=mode,
        max_concurrent_trials=int(sweep.get("max_concurrent_trials", 1)),
        asha=sweep.get("asha"),
        space=space,
        base=base,
        trial_cpus=float(sweep.get("trial_cpus", 1.0)),
    )


def tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ray Tune's param_space for the validated space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "loguniform":
            out[key] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "uniform":
            out[key] = tune.uniform(spec["low"], spec["high"])
        elif kind == "randint":
            out[key] = tune.randint(int(spec["low"]), int(math.ceil(spec["high"])))
        elif kind == "choice":
            out[key] = tune.choice(spec["values"])
        else:
            out[key] = tune.grid_search(spec["values"])
    return out
