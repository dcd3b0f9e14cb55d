"""Evaluation during training (`eval.every` steps): retrieval and a linear plane probe on a fixed
subset, computed on rank 0 with the live model, logged to the training run as eval/*."""

from __future__ import annotations

import logging

from usvs_dist.config import RootConfig
from usvs_dist.eval import tasks
from usvs_dist.eval.clips import ClipSet, load_clips
from usvs_dist.eval.encoders import Encoders

log = logging.getLogger(__name__)


class PeriodicEval:
    """Holds the fixed subsets; call with the (unwrapped) PretrainModel to get eval/* metrics."""

    def __init__(self, cfg: RootConfig, shards: str):
        self.cfg = cfg
        self.planes: ClipSet | None = None
        self.retrieval: ClipSet | None = None
        try:
            self.planes = load_clips(
                cfg.data, shards, list(cfg.eval.plane_splits), cfg.eval.subset, audio=False
            )
            if (self.planes.image_label < 0).all() or len(set(self.planes.scan)) < 2:
                log.warning("periodic evaluation: the subset has no labels or one scan; no plane probe")
                self.planes = None
        except ValueError as exc:
            log.warning("periodic evaluation: no plane subset (%s)", exc)
        try:
            self.retrieval = load_clips(
                cfg.data, shards, [cfg.eval.retrieval_split], cfg.eval.subset, audio=True
            )
        except ValueError as exc:
            log.warning("periodic evaluation: no retrieval subset (%s)", exc)

    def __call__(self, model) -> dict[str, float]:
        """eval/* metrics of the model as it is now; the model is back in training mode after."""
        enc = Encoders(self.cfg, dict(model.encoders.items()), dict(model.projections.items()), "training")
        metrics: dict[str, float] = {}
        try:
            if self.retrieval is not None and {"video", "audio"} <= set(enc.heads):
                metrics.update(tasks.retrieval(enc, self.retrieval))
            if self.planes is not None and {"video", "image"} & set(enc.encoders):
                found, _ = tasks.planes(enc, self.planes, protocols=("linear",))
                metrics.update({k: v for k, v in found.items() if not k.endswith("_std")})
        finally:
            model.train()
        return {f"eval/{k}": v for k, v in metrics.items()}
