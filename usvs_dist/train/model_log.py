"""The end of a run: its encoders logged as an MLflow PyTorch model (and registered when asked).

One encoder is the model: the video encoder, else the first the run trained (an MLflow model is
one callable, and a wrapper of several encoders would be a module no one else builds). The
others stay in the run's encoders/encoders.pt artifact; the model folder carries
preprocessing.json for every encoder, and its metadata names which one it holds.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from usvs_dist.config import RootConfig, redact
from usvs_dist.data.preprocessing import clip_timing, describe
from usvs_dist.eval.encoders import ENCODERS_FILE, build_encoders
from usvs_dist.tracking import log_encoder_model

log = logging.getLogger(__name__)


def log_trained_model(cfg: RootConfig, checkpoint: str | Path, uri: str, run_id: str) -> str | None:
    """Log the checkpoint's video (else first) encoder into the run as an MLflow model; its URI.

    With tracking.register_as set, the model is registered under that name. A failure is a
    warning (None returned): the run's weights are in encoders/encoders.pt either way.
    """
    try:
        state = torch.load(Path(checkpoint) / ENCODERS_FILE, map_location="cpu", weights_only=True)
        enc = build_encoders(cfg, state, "final checkpoint")
        modality = "video" if "video" in enc.encoders else next(iter(enc.encoders))
        timing = clip_timing(cfg)
        prep = {m: describe(cfg, m, timing) for m in enc.encoders}
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "preprocessing.json"
            file.write_text(json.dumps(prep, indent=2) + "\n")
            return log_encoder_model(
                uri,
                run_id,
                enc.encoders[modality],
                prep[modality]["shape"],
                f"{modality}_encoder",
                extra_files=[file],
                metadata={
                    "modality": modality,
                    "encoder": getattr(cfg.model, modality),
                    "other_encoders": "the run's encoders/encoders.pt artifact holds every encoder",
                },
                register_as=cfg.tracking.register_as,
            )
    except Exception as exc:  # tracking outages must not fail a finished run
        log.warning("logging the encoder as an MLflow model failed: %s", redact(str(exc).splitlines()[0]))
        return None
