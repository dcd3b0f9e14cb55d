"""One optimisation step: forward through the engine, the recipe's parts, backward, step."""

from __future__ import annotations

import torch

from usvs_dist.config.schema import ObjectiveConfig
from usvs_dist.losses import RECIPES, total_loss


def train_step(engine, batch: dict, objective: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """Run one step; returns the detached loss parts and `loss` (this rank's values)."""
    dtype = next(engine.module.parameters()).dtype
    video = batch["video"].to(engine.device, dtype=dtype, non_blocking=True)
    audio = batch["audio"].to(engine.device, dtype=dtype, non_blocking=True)
    emb = engine(video, audio)
    # Losses in fp32 whatever the engine's precision: bf16 logits lose the softmax's tail.
    parts = RECIPES[objective.recipe]({k: v.float() for k, v in emb.items()}, objective)
    loss = total_loss(parts)
    engine.backward(loss)
    engine.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
