"""One optimisation step: batch -> the recipe's views -> engine forward -> parts -> backward, step."""

from __future__ import annotations

import logging

import torch

from usvs_dist.config.schema import RootConfig
from usvs_dist.data import schema, views
from usvs_dist.losses import Requirements, objective_parts, total_loss
from usvs_dist.models import modalities_for, model_inputs

log = logging.getLogger(__name__)


def reads_narration(needs: Requirements) -> bool:
    """True when the recipe runs the audio encoder, so it trains on clips with narration only."""
    return "audio" in modalities_for(needs.outputs)


class BatchViews:
    """Turns a loader batch into the model inputs and targets a recipe reads, on the device.

    Which views: those of data.views.VIEWS that make the inputs of the recipe's outputs
    (models.OUTPUTS) and the targets its terms read.
    """

    def __init__(
        self, cfg: RootConfig, needs: Requirements, vocabulary: schema.Vocabulary = schema.FETAL_PLANES
    ):
        self.cfg = cfg
        self.needs = needs
        self.vocabulary = vocabulary
        """The shards' label classes (index.json), whose coarse grouping anatomy positives use."""
        anatomy = cfg.objective.anatomy
        if "anatomy_label" in needs.targets and anatomy.granularity == "coarse" and not vocabulary.coarse_of:
            log.warning(
                "objective.anatomy.granularity=coarse, but the shards' label vocabulary has no coarse "
                "grouping: anatomy positives are matched on its %d classes",
                len(vocabulary.classes),
            )
        self.views = views.views_for(model_inputs(needs.outputs), needs.targets)

    def __call__(
        self, batch: dict, device: torch.device, dtype: torch.dtype
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(model inputs, targets) for this batch."""
        b = views.ViewBatch(batch, device, dtype, self.cfg, self.vocabulary)
        inputs: dict[str, torch.Tensor] = {}
        targets: dict[str, torch.Tensor] = {}
        for view in self.views:
            made = view.make(b)
            inputs.update({name: made[name] for name in view.inputs})
            targets.update({name: made[name] for name in view.targets})
        return inputs, targets


def train_step(
    engine, batch: dict, cfg: RootConfig, make_views: BatchViews, progress: float
) -> dict[str, torch.Tensor]:
    """Run one micro-step; returns the detached parts and `loss` (this rank's values).

    Args:
        engine: the DeepSpeed engine around the PretrainModel.
        batch: a loader batch.
        cfg: the run's config.
        make_views: the recipe's BatchViews.
        progress: optimizer step / train.steps, for the recipe's schedules.
    """
    dtype = next(engine.module.parameters()).dtype
    inputs, targets = make_views(batch, engine.device, dtype)
    outputs = engine(inputs)
    # Losses in fp32 whatever the engine's precision: bf16 logits lose the softmax's tail.
    values = {**{k: v.float() for k, v in outputs.items()}, **targets}
    parts = objective_parts(values, cfg.objective, progress)
    loss = total_loss(parts)
    engine.backward(loss)
    engine.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
