"""Evaluation during training (`eval.every` steps): the periodic tasks of `eval.tasks.TASKS`
(retrieval and a linear plane probe) on fixed subsets, computed on rank 0 with the live model,
logged to the training run as eval/*, with eval/seconds, what the call cost.

It runs where the model is (eval.device auto), with the same task functions and device handling
as `python -m usvs_dist.evaluate`; with eval.device cpu or cuda elsewhere than the model, on a
plain copy of the encoders and heads made there for the call.

The plane probe reads eval.periodic_plane_splits (default: train), not eval.plane_splits: the
held-out scans the final evaluation scores stay unseen while checkpoints are being chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from usvs_dist.config import RootConfig
from usvs_dist.eval import tasks
from usvs_dist.eval.clips import ClipSet
from usvs_dist.eval.device import resolve_device
from usvs_dist.eval.encoders import Encoders, build_encoders
from usvs_dist.models.pretrain import encoder_state_dicts

log = logging.getLogger(__name__)


class PeriodicEval:
    """Holds the fixed subsets; call with the (unwrapped) PretrainModel to get eval/* metrics."""

    def __init__(self, cfg: RootConfig, shards: str):
        self.cfg = cfg
        self.tasks = tasks.periodic_tasks()
        # Resolved now, so eval.device=cuda on a worker without CUDA fails at the start, not at step N.
        self.device = None if cfg.eval.device == "auto" else resolve_device(cfg.eval.device)
        """Where to evaluate; None: where the model is."""
        self.clips: dict[str, ClipSet] = {}
        """Subset by Clips.label; a set that could not be loaded (or used) is left out."""
        # The labelled subset's splits: eval.periodic_plane_splits in the place of plane_splits.
        periodic = dataclasses.replace(
            cfg, eval=dataclasses.replace(cfg.eval, plane_splits=list(cfg.eval.periodic_plane_splits))
        )
        for source in {task.clips.label: task.clips for task in self.tasks.values()}.values():
            try:
                clips = source.load(periodic, shards, cfg.eval.subset)
            except ValueError as exc:
                log.warning("periodic evaluation: no %s subset (%s)", source.label, exc)
                continue
            if source.labelled:
                labelled = clips.image_label >= 0
                scans = len({s for s, ok in zip(clips.scan, labelled.tolist(), strict=True) if ok})
                if scans < max(2, cfg.eval.folds):
                    log.warning(
                        "periodic evaluation: the %s subset has labelled clips of %d scans, fewer than "
                        "eval.folds=%d; left out (raise eval.subset, widen eval.periodic_plane_splits "
                        "or lower eval.folds)",
                        source.label,
                        scans,
                        cfg.eval.folds,
                    )
                    continue
            self.clips[source.label] = clips

    def _encoders(self, model) -> Encoders:
        """The model's encoders and heads, or a plain copy of them on eval.device when elsewhere."""
        live = Encoders(self.cfg, dict(model.encoders.items()), dict(model.projections.items()), "training")
        if self.device is None or self.device.type == live.device.type:
            return live
        # From state dicts (whole here, even under ZeRO-3's gathering): a deep copy would carry the
        # engine's hooks. Building draws initial weights: the training RNG must not see that.
        with torch.random.fork_rng(devices=[]):
            return build_encoders(self.cfg, encoder_state_dicts(model), "training").to(self.device)

    def __call__(self, model) -> dict[str, float]:
        """eval/* metrics of the model as it is now and eval/seconds (the call's wall time); the
        model is back in training mode after."""
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        try:
            enc = self._encoders(model)
            for task in self.tasks.values():
                clips = self.clips.get(task.clips.label)
                if clips is not None and task.runs_on(enc):
                    found, _ = task.run(enc, clips, ("linear",))
                    metrics.update({k: v for k, v in found.items() if not k.endswith("_std")})
        finally:
            model.train()
        if metrics:  # a call with nothing to evaluate logs nothing, its cost included
            metrics["seconds"] = time.perf_counter() - start
        return {f"eval/{k}": v for k, v in metrics.items()}
