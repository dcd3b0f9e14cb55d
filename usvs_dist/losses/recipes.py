"""Loss terms by name and the recipes of docs/methods.md that weigh them into parts.

A term reads model outputs (and targets the step derives from the batch) and returns its value
and extra metrics; it declares what it reads: outputs (usvs_dist.models.OUTPUTS says what each
is made of), targets (made by usvs_dist.data.views.VIEWS) and config keys. A recipe is a list
of named parts, each a weighted sum of terms, and declares the config keys its parts read; part
`g` is returned as `g_loss` (times objective.weights[g], default 1) and summed into the training
loss; the terms of a multi-term part and every extra metric are returned under their own names
and only logged (open_clip's `*_loss` convention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from usvs_dist.config.schema import ConfigError, ObjectiveConfig
from usvs_dist.losses.anatomy import anatomy_info_nce
from usvs_dist.losses.infonce import info_nce
from usvs_dist.losses.negatives import same_scan_exclusions
from usvs_dist.losses.pretext import pretext_classification
from usvs_dist.losses.selfpaced import self_paced_info_nce
from usvs_dist.losses.triplet import hardest_triplet

Tensors = dict[str, torch.Tensor]
TermFn = Callable[[Tensors, ObjectiveConfig, float], tuple[torch.Tensor, Tensors]]


@dataclass(frozen=True)
class Term:
    """One loss term: what it reads and how it is computed."""

    fn: TermFn
    """(model outputs + targets, objective config, training progress in [0, 1]) -> (value, extras)."""
    outputs: frozenset[str]
    """Model outputs it reads (names in usvs_dist.models.OUTPUTS)."""
    targets: frozenset[str] = frozenset()
    """Targets the training step derives from the batch (usvs_dist.data.views.VIEWS makes them)."""
    reads: tuple[str, ...] = ()
    """Config keys that change its value, also through the views and heads of what it reads; a
    section (objective.self_paced) stands for every key in it."""
    paper: str = ""
    """Where it comes from: the paper's symbol and the recipe (docs/methods.md cites the papers)."""

    @property
    def same_scan(self) -> bool:
        """Whether it leaves out same-scan negatives: it declares objective.same_scan_negatives, and
        then reads SAME_SCAN_TARGETS too unless that is keep."""
        return SAME_SCAN_KEYS[0] in self.reads


SAME_SCAN_KEYS = ("objective.same_scan_negatives", "objective.same_scan_window_s")
"""Config keys of the gathered losses' same-scan negatives (losses.negatives)."""
SAME_SCAN_TARGETS = frozenset({"scan_id", "clip_t0"})
"""Targets a `same_scan` term reads unless objective.same_scan_negatives=keep (data.views' `scan`)."""


_EXCLUDED = "_same_scan_excluded"
"""Key prefix under which the first term of a step leaves the exclusion mask in the values for the
others, so a step gathers the scan ids once however many terms read them."""


def _excluded(o: Tensors, c: ObjectiveConfig) -> torch.Tensor | None:
    """The gathered samples that are not negatives of each local row; None for keep."""
    if c.same_scan_negatives == "keep":
        return None
    key = f"{_EXCLUDED}/{c.same_scan_negatives}/{c.same_scan_window_s}"
    if key not in o:
        o[key] = same_scan_exclusions(o["scan_id"], o["clip_t0"], c.same_scan_negatives, c.same_scan_window_s)
    return o[key]


def _nce(x: str, y: str) -> TermFn:
    def fn(o: Tensors, c: ObjectiveConfig, progress: float) -> tuple[torch.Tensor, Tensors]:
        return info_nce(o[x], o[y], c.temperature, symmetric=c.symmetric, exclude_BN=_excluded(o, c)), {}

    return fn


def _triplet(x: str, y: str) -> TermFn:
    def fn(o: Tensors, c: ObjectiveConfig, progress: float) -> tuple[torch.Tensor, Tensors]:
        return hardest_triplet(o[x], o[y], c.margin, exclude_BN=_excluded(o, c)), {}

    return fn


def _self_paced(o: Tensors, c: ObjectiveConfig, progress: float) -> tuple[torch.Tensor, Tensors]:
    return self_paced_info_nce(
        o["video"], o["audio"], c.temperature, progress, c.self_paced, c.symmetric, exclude_BN=_excluded(o, c)
    )


def _classify(task: str) -> TermFn:
    def fn(o: Tensors, c: ObjectiveConfig, progress: float) -> tuple[torch.Tensor, Tensors]:
        loss, accuracy = pretext_classification(o[f"{task}_logits"], o[f"{task}_target"])
        return loss, {f"{task}_accuracy": accuracy}

    return fn


def _anatomy(o: Tensors, c: ObjectiveConfig, progress: float) -> tuple[torch.Tensor, Tensors]:
    return anatomy_info_nce(
        o["image_view1"],
        o["image_view2"],
        o["anatomy_label"],
        c.temperature,
        c.anatomy.ratio,
        exclude_BN=_excluded(o, c),
    )


def _f(*names: str) -> frozenset[str]:
    return frozenset(names)


_NCE = ("objective.temperature", "objective.symmetric", *SAME_SCAN_KEYS)
_TRIPLET = ("objective.margin", *SAME_SCAN_KEYS)
# Both isbi2020 heads read the one shuffled and rotated clip: every key of that view counts.
_PRETEXT = tuple(
    f"objective.pretext.{k}"
    for k in ("subclips", "permutations", "rotations", "transform_region", "circle_radius")
)

TERMS: dict[str, Term] = {
    "va_nce": Term(
        _nce("video", "audio"), _f("video", "audio"), reads=_NCE, paper="L_c(v, a), usvs2020, dual2024"
    ),
    "vi_nce": Term(_nce("video", "image"), _f("video", "image"), reads=_NCE, paper="L_c(v, i), dual2024"),
    "v_va_nce": Term(_nce("video", "va"), _f("video", "va"), reads=_NCE, paper="L_c(v, va), dual2024"),
    "v_vi_nce": Term(_nce("video", "vi"), _f("video", "vi"), reads=_NCE, paper="L_c(v, vi), dual2024"),
    "va_triplet": Term(
        _triplet("video", "audio"), _f("video", "audio"), reads=_TRIPLET, paper="L_t(v, a), dual2024"
    ),
    "vi_triplet": Term(
        _triplet("video", "image"), _f("video", "image"), reads=_TRIPLET, paper="L_t(v, i), dual2024"
    ),
    "va_selfpaced_nce": Term(
        _self_paced, _f("video", "audio"), reads=(*_NCE, "objective.self_paced"), paper="usvs2020"
    ),
    "order_ce": Term(
        _classify("order"), _f("order_logits"), _f("order_target"), reads=_PRETEXT, paper="isbi2020"
    ),
    "rotation_ce": Term(
        _classify("rotation"), _f("rotation_logits"), _f("rotation_target"), reads=_PRETEXT, paper="isbi2020"
    ),
    "anatomy_nce": Term(
        _anatomy,
        _f("image_view1", "image_view2"),
        _f("anatomy_label"),
        reads=("objective.temperature", "objective.anatomy", *SAME_SCAN_KEYS),
        paper="awcl2022",
    ),
}

Part = tuple[str, tuple[tuple[str, float], ...]]
"""(part name, ((term, coefficient), ...))."""


def _usvs2020(c: ObjectiveConfig) -> list[Part]:
    return [("selfpaced_va", (("va_selfpaced_nce", 1.0),))]


def _dual2024(c: ObjectiveConfig) -> list[Part]:
    # eqs. 7, 8 and 13: L = L_a + L_i + L_t(v, a) + L_t(v, i)
    return [
        ("mmcl_a", (("va_nce", c.pi), ("v_va_nce", 1.0 - c.pi))),
        ("mmcl_i", (("vi_nce", c.pi), ("v_vi_nce", 1.0 - c.pi))),
        ("mmsl_va", (("va_triplet", 1.0),)),
        ("mmsl_vi", (("vi_triplet", 1.0),)),
    ]


def _isbi2020(c: ObjectiveConfig) -> list[Part]:
    return [("order", (("order_ce", 1.0),)), ("transform", (("rotation_ce", c.pretext.transform_weight),))]


def _awcl2022(c: ObjectiveConfig) -> list[Part]:
    return [("anatomy", (("anatomy_nce", 1.0),))]


def _custom(c: ObjectiveConfig) -> list[Part]:
    return [(t.term, ((t.term, t.weight),)) for t in c.terms]


@dataclass(frozen=True)
class Recipe:
    """A recipe: its parts under an objective config, and the config keys the parts read."""

    parts: Callable[[ObjectiveConfig], list[Part]]
    reads: tuple[str, ...] = ()
    """Config keys its part coefficients read, beyond its terms' (`Term.reads`)."""


RECIPES: dict[str, Recipe] = {
    "usvs2020": Recipe(_usvs2020),
    "dual2024": Recipe(_dual2024, reads=("objective.pi",)),
    "isbi2020": Recipe(_isbi2020, reads=("objective.pretext.transform_weight",)),
    "awcl2022": Recipe(_awcl2022),
    "custom": Recipe(_custom, reads=("objective.terms",)),
}

ALWAYS_READ = ("objective.recipe", "objective.weights")
"""Keys every recipe reads (objective.weights.<part>: only its own parts)."""


@dataclass(frozen=True)
class Requirements:
    """What a recipe reads: model outputs, batch-derived targets, config keys; whether shards need labels."""

    outputs: frozenset[str]
    targets: frozenset[str]
    reads: frozenset[str] = frozenset()
    """Config keys its terms and parts read (a section stands for every key in it)."""

    @property
    def needs_labels(self) -> bool:
        """True when a term reads plane labels."""
        return "anatomy_label" in self.targets


def check_objective(cfg: ObjectiveConfig) -> Requirements:
    """Validate recipe, terms and weights against the registries (else ConfigError); return what it reads."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(
            f"config key objective.recipe={cfg.recipe!r} is invalid: expected one of {', '.join(RECIPES)}"
        )
    seen: set[str] = set()
    for k, t in enumerate(cfg.terms):
        if t.term not in TERMS:
            raise ConfigError(
                f"config key objective.terms[{k}].term={t.term!r} is invalid: "
                f"expected one of {', '.join(TERMS)}"
            )
        if t.term in seen:
            raise ConfigError(f"config key objective.terms[{k}].term={t.term!r} is listed twice")
        seen.add(t.term)
    parts = RECIPES[cfg.recipe].parts(cfg)
    names = [name for name, _ in parts]
    for name in cfg.weights:
        if name not in names:
            raise ConfigError(
                f"config key objective.weights.{name} is not a part of recipe {cfg.recipe!r}: "
                f"expected some of {', '.join(names)}"
            )
    return _requirements(cfg, parts)


def _requirements(cfg: ObjectiveConfig, parts: list[Part]) -> Requirements:
    terms = [TERMS[term] for _, group in parts for term, _ in group]
    same_scan = cfg.same_scan_negatives != "keep" and any(t.same_scan for t in terms)
    return Requirements(
        outputs=frozenset().union(*(t.outputs for t in terms)),
        targets=frozenset().union(*(t.targets for t in terms), SAME_SCAN_TARGETS if same_scan else ()),
        reads=frozenset(
            k
            for k in (*ALWAYS_READ, *RECIPES[cfg.recipe].reads, *(k for t in terms for k in t.reads))
            # The window's width matters only in window mode.
            if k != "objective.same_scan_window_s" or cfg.same_scan_negatives == "window"
        ),
    )


def objective_parts(values: Tensors, cfg: ObjectiveConfig, progress: float) -> Tensors:
    """The recipe's parts: `{part}_loss` (weighted, summed into the loss) and logged-only extras.

    Args:
        values: model outputs and targets by name.
        cfg: the objective section.
        progress: step / train.steps, for schedules (usvs2020's self-paced lambda).
    """
    parts: Tensors = {}
    for name, terms in RECIPES[cfg.recipe].parts(cfg):
        total = None
        for term, coefficient in terms:
            value, extras = TERMS[term].fn(values, cfg, progress)
            parts.update(extras)
            if len(terms) > 1:
                parts[term] = value.detach()
            total = coefficient * value if total is None else total + coefficient * value
        parts[f"{name}_loss"] = cfg.weights.get(name, 1.0) * total
    return parts


def total_loss(parts: Tensors) -> torch.Tensor:
    """Sum of the parts named `*_loss`."""
    terms = [v for k, v in parts.items() if k.endswith("_loss")]
    if not terms:
        raise ValueError(f"objective returned no *_loss part (got {sorted(parts)})")
    return torch.stack(terms).sum()


def recipe_reads(cfg: ObjectiveConfig, key: str) -> bool:
    """Whether config key `key` (e.g. objective.pi) changes the recipe's loss; True outside objective.*.

    Read from the declarations: the terms' and the recipe's `reads`, and the recipe's part names
    for objective.weights.<part>.
    """
    if not key.startswith("objective."):
        return True
    parts = RECIPES[cfg.recipe].parts(cfg)
    if key.startswith("objective.weights."):
        return key.removeprefix("objective.weights.") in {name for name, _ in parts}
    return any(key == k or key.startswith(f"{k}.") for k in _requirements(cfg, parts).reads)
