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
The `sweep:` section is a typed config (SweepConfig), built and checked like the training config
(unknown keys, named with the nearest valid one; types, choices, ranges); with the base it becomes
a Sweep, which checks every searched key before a trial starts: it must be a config key, its range
non-empty, the recipe must read it, and every value a trial can draw must be valid for it (each
choice or grid value, and both ends of a range, applied to the base one key at a time). A trial's
parameters reach its config through `config.apply_overrides`, as the command line's
`section.key=value` do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from usvs_dist.config import (
    ConfigError,
    RootConfig,
    Section,
    apply_overrides,
    check_choices,
    flatten,
    from_dict,
    from_tree,
    name_sections,
)
from usvs_dist.config.load import unknown_key
from usvs_dist.losses import check_objective, recipe_reads


@dataclass(kw_only=True)
class ParamSpec:
    """One dimension of the search space (checked by the sweep section, which knows its key)."""

    type: Literal["loguniform", "uniform", "choice", "grid", "randint"]
    """How values are drawn: a range (loguniform, uniform, randint) or a list (choice, grid)."""
    low: float | None = None
    """Lower end of a range."""
    high: float | None = None
    """Upper end of a range (randint: exclusive)."""
    values: list[Any] | None = None
    """The values of a choice or grid."""

    def to_json(self) -> dict[str, Any]:
        """The spec as written, without the fields its type leaves unset (as logged with the sweep)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(kw_only=True)
class AshaConfig(Section):
    """ASHA early stopping: trials compared at `step` milestones, the worse stopped."""

    grace_period: int = 1
    """Steps every trial runs before it can be stopped."""
    reduction_factor: float = 2.0
    """1 / reduction_factor of the trials go on at each rung."""

    def check(self) -> None:
        """Grace period and reduction factor."""
        self.require(self.grace_period >= 1, "grace_period", "an integer >= 1")
        self.require(self.reduction_factor > 1, "reduction_factor", "> 1")


@dataclass(kw_only=True)
class SweepConfig(Section):
    """The `sweep:` section of a sweep file."""

    name: str = ""
    """MLflow parent run and Tune experiment name; empty: the sweep file's name."""
    search: Literal["grid", "random", "optuna"] = "random"
    """grid: every combination of grid values; random; optuna (when installed)."""
    num_samples: int = 1
    """Trials (random, optuna); repeats of the grid (grid)."""
    metric: str = "loss"
    """What trials are compared on (eval/...: the periodic evaluation's metrics)."""
    mode: Literal["min", "max"] = "max"
    """Whether a lower or a higher metric is better."""
    max_concurrent_trials: int = 1
    """Trials run at once (each a training run with its own workers)."""
    trial_cpus: float = 1.0
    """CPUs a trial's driver holds (its workers reserve their own)."""
    asha: AshaConfig | None = None
    """Early stopping; null: none."""
    space: dict[str, ParamSpec] = field(default_factory=dict)
    """Config key (section.key) -> how Tune draws its values."""

    def check(self) -> None:
        """Counts, a non-empty space of non-empty ranges, grid values only in a grid search."""
        self.require(self.num_samples >= 1, "num_samples", "an integer >= 1")
        self.require(self.max_concurrent_trials >= 1, "max_concurrent_trials", "an integer >= 1")
        self.require(self.trial_cpus > 0, "trial_cpus", "> 0")
        self.require(bool(self.space), "space", "a mapping of config keys to their search (it is empty)")
        for key, spec in self.space.items():
            _check_spec(spec, self.key(f"space.{key}"))
        grid = [k for k, spec in self.space.items() if spec.type == "grid"]
        self.require(
            not grid or self.search == "grid",
            "search",
            f"grid: the space has grid values ({', '.join(grid)})",
        )


def _check_spec(spec: ParamSpec, where: str) -> None:
    """ConfigError naming `where` (sweep.space.<key>) when the spec draws from an empty set."""
    check_choices(spec, where)
    if spec.type in ("choice", "grid"):
        if not spec.values:
            raise ConfigError(f"{where}: {spec.type} needs a non-empty list `values`")
    elif spec.low is None or spec.high is None or not spec.low < spec.high:
        raise ConfigError(f"{where}: the range [{spec.low}, {spec.high}] is empty (need low < high)")
    elif spec.type == "loguniform" and spec.low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {spec.low}")


@dataclass(kw_only=True)
class Sweep(SweepConfig):
    """A validated sweep file: its sweep section and the base config every trial starts from.

    Beyond the section's own checks, every searched key must be a config key that the base's
    recipe reads, and an eval/ metric needs the base's periodic evaluation.
    """

    base: RootConfig

    def check(self) -> None:
        """The section's checks, then each searched key against the base and its recipe."""
        super().check()
        check_objective(self.base.objective)
        known = set(flatten(self.base))
        for key in self.space:
            where = self.key(f"space.{key}")
            if key not in known:
                raise ConfigError(f"{where}: {key} is not a config key")
            if not recipe_reads(self.base.objective, key):
                raise ConfigError(
                    f"{where}: recipe {self.base.objective.recipe!r} does not use {key}; "
                    "sweeping it changes nothing"
                )
            for value in drawable_extremes(self.space[key]):
                try:
                    apply_overrides(self.base, {key: value})
                except ConfigError as exc:
                    raise ConfigError(f"{where}: a trial could draw {key}={value!r}: {exc}") from exc
        every = self.base.eval.key("every")
        self.require(
            not self.metric.startswith("eval/") or self.base.eval.every > 0,
            "metric",
            f"an eval/ metric only with base.{every} > 0 (periodic evaluation)",
        )


name_sections(SweepConfig, "sweep")


def drawable_extremes(spec: ParamSpec) -> list[Any]:
    """The values that stand for all a checked spec can draw: every value of a list, both ends of
    a range (randint's high is exclusive). Config checks are ranges, so the ends decide a range."""
    if spec.type in ("choice", "grid"):
        return list(spec.values or [])
    if spec.type == "randint":
        return [int(spec.low), int(math.ceil(spec.high)) - 1]
    return [spec.low, spec.high]


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; ConfigError names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a `sweep:` section")
    for key in doc:
        if key not in ("sweep", "base"):
            raise ConfigError(f"{path}: {unknown_key(str(key), ('sweep', 'base'))}")
    if not isinstance(doc.get("sweep"), dict):
        raise ConfigError(f"{path}: expected a `sweep:` section")
    try:
        base = from_dict(doc.get("base") or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from exc
    try:
        section = from_tree(SweepConfig, doc["sweep"])
        fields = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        return Sweep(**{**fields, "name": section.name or path.stem}, base=base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def tune_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Ray Tune's param_space for the validated space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "loguniform":
            out[key] = tune.loguniform(spec.low, spec.high)
        elif spec.type == "uniform":
            out[key] = tune.uniform(spec.low, spec.high)
        elif spec.type == "randint":
            out[key] = tune.randint(int(spec.low), int(math.ceil(spec.high)))
        elif spec.type == "choice":
            out[key] = tune.choice(spec.values)
        else:
            out[key] = tune.grid_search(spec.values)
    return out
