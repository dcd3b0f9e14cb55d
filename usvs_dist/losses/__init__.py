"""Objectives: pure loss functions (one file per family) and the recipes that compose them.

A recipe maps the model's embeddings to named parts; every part whose name ends in `_loss`
is summed into the training loss (open_clip's convention), the rest are logged as metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from usvs_dist.config.schema import ObjectiveConfig
from usvs_dist.losses.infonce import info_nce

Parts = dict[str, torch.Tensor]


def va_infonce(emb: dict[str, torch.Tensor], cfg: ObjectiveConfig) -> Parts:
    """Symmetric video<->audio InfoNCE (seed 000's cross-modal loss without self-pacing)."""
    return {"va_nce_loss": info_nce(emb["video"], emb["audio"], cfg.temperature)}


RECIPES: dict[str, Callable[[dict[str, torch.Tensor], ObjectiveConfig], Parts]] = {
    "va_infonce": va_infonce,
}


def total_loss(parts: Parts) -> torch.Tensor:
    """Sum of the parts named `*_loss`."""
    terms = [v for k, v in parts.items() if k.endswith("_loss")]
    if not terms:
        raise ValueError(f"objective returned no *_loss part (got {sorted(parts)})")
    return torch.stack(terms).sum()


__all__ = ["RECIPES", "info_nce", "total_loss", "va_infonce"]
