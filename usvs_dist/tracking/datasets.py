"""The run's shard set as an MLflow dataset input (the Datasets panel of the run page)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import PurePosixPath
from urllib.parse import urlparse

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from usvs_dist.config import redact

log = logging.getLogger(__name__)

DIGEST_CHARS = 36
"""MLflow stores at most 36 characters of a dataset digest (mlflow.utils.validation)."""


def shard_set_input(source: str, index_sha256: str, split: str, clips: int) -> DatasetInput:
    """A dataset input for the shards at `source`: name = the folder's last component, digest =
    index.json's sha256 (first 36 hex characters; the full one is in the profile), source =
    `source` redacted (MLflow resolves its type: local, s3, gs, http, ...)."""
    source = redact(source)
    parsed = urlparse(source)
    name = PurePosixPath(parsed.path.rstrip("/")).name or parsed.netloc or "shards"
    with warnings.catch_warnings():  # MLflow warns when two source types could read a URL
        warnings.simplefilter("ignore")
        resolved = resolve_dataset_source(source)
    info = MetaDataset(resolved, name=name, digest=index_sha256[:DIGEST_CHARS]).to_dict()
    entity = Dataset(
        name=info["name"],
        digest=info["digest"],
        source_type=info["source_type"],
        source=info["source"],
        profile=json.dumps({"index_sha256": index_sha256, "split": split, "clips": clips}),
    )
    return DatasetInput(
        entity, tags=[InputTag("mlflow.data.context", "train"), InputTag("usvs.split", split)]
    )


def log_shard_set(uri: str, run_id: str, source: str, index_sha256: str, split: str, clips: int) -> None:
    """Log the run's shard set as a dataset input (a warning, not an error, when MLflow fails)."""
    try:
        MlflowClient(uri).log_inputs(run_id, datasets=[shard_set_input(source, index_sha256, split, clips)])
    except Exception as exc:  # a dataset record is not worth failing a run
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("MLflow dataset input not logged: %s", redact(first))
