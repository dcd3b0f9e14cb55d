"""An encoder logged as an MLflow PyTorch model (with a tensor signature), optionally registered."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from torch import nn

from usvs_dist import __version__
from usvs_dist.config import redact

log = logging.getLogger(__name__)
ENV = "MLFLOW_TRACKING_URI"


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's fluent API (log_model, register_model) reads a process-wide URI, and
    `set_tracking_uri` also writes MLFLOW_TRACKING_URI, which `resolve_uri` reads: set both for
    the call, then put both back as they were (mlflow has no public way to unset its own)."""
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get(ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = before
        if env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = env


def signature(input_shape: list[int | None], features: int) -> ModelSignature:
    """float32 tensors of `input_shape` (None: any size, e.g. the batch) -> [B, features]."""
    shape = tuple(-1 if d is None else int(d) for d in input_shape)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, features))]),
    )


def log_encoder_model(
    uri: str,
    run_id: str,
    encoder: nn.Module,
    input_shape: list[int | None],
    name: str,
    extra_files: list[str | Path] = (),
    metadata: dict | None = None,
    register_as: str = "",
) -> str:
    """Log `encoder` (in eval mode) into run `run_id` as an MLflow PyTorch model; returns its URI.

    The signature declares float32 input of `input_shape` and [B, encoder.out_features] output;
    no input example is stored (a paper-size clip would be megabytes of JSON). The module is
    pickled: mlflow.pytorch.load_model needs usvs_dist importable. `extra_files`
    travel inside the model folder (preprocessing.json). With `register_as`, the model becomes a
    new version of that registered model. Errors propagate: the caller decides if they are fatal.
    """
    import mlflow.pytorch  # a few seconds of imports, paid only by the run's end

    encoder = encoder.eval()
    with _tracking_uri(uri):
        info = mlflow.pytorch.log_model(
            encoder,
            name=name,
            run_id=run_id,
            signature=signature(input_shape, int(encoder.out_features)),
            extra_files=[str(f) for f in extra_files] or None,
            metadata=metadata,
            # Pickled, not MLflow's default torch.export graph ("pt2"): that needs an input example
            # and fixes the traced batch size; loading the pickle needs usvs_dist installed.
            serialization_format="pickle",
            # Stated, not inferred: inference loads the model in a subprocess (slow, and it pins
            # whatever happens to be installed).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"usvs_dist=={__version__}"],
        )
        if register_as:
            version = mlflow.register_model(info.model_uri, register_as)
            log.info("registered %s as %s version %s", name, register_as, version.version)
    log.info("logged %s as an MLflow model at %s", name, redact(info.model_uri))
    return info.model_uri
