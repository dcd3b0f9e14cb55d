"""Objectives: pure loss functions (one file per family) and the recipes that compose them."""

from usvs_dist.losses.anatomy import anatomy_info_nce, anatomy_targets
from usvs_dist.losses.infonce import info_nce
from usvs_dist.losses.negatives import same_scan_exclusions
from usvs_dist.losses.pretext import pretext_classification
from usvs_dist.losses.recipes import (
    ALWAYS_READ,
    RECIPES,
    SAME_SCAN_KEYS,
    SAME_SCAN_TARGETS,
    TERMS,
    Recipe,
    Requirements,
    Term,
    check_objective,
    objective_parts,
    recipe_reads,
    total_loss,
)
from usvs_dist.losses.selfpaced import admit_negatives, admitted_share, affinity, self_paced_info_nce
from usvs_dist.losses.triplet import hardest_triplet

__all__ = [
    "ALWAYS_READ",
    "RECIPES",
    "SAME_SCAN_KEYS",
    "SAME_SCAN_TARGETS",
    "TERMS",
    "Recipe",
    "Requirements",
    "Term",
    "admit_negatives",
    "admitted_share",
    "affinity",
    "anatomy_info_nce",
    "anatomy_targets",
    "check_objective",
    "hardest_triplet",
    "info_nce",
    "objective_parts",
    "pretext_classification",
    "recipe_reads",
    "same_scan_exclusions",
    "self_paced_info_nce",
    "total_loss",
]
