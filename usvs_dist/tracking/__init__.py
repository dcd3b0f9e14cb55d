"""Side effects behind a small interface: MLflow on rank 0, nothing elsewhere.

`Tracker.log_metrics(metrics, step)`, `log_artifact(path)`, `close()`. MLflow failures become
warnings: a multi-day run must not die because the tracking server blinked. `log_encoder_model`
logs a trained encoder as an MLflow PyTorch model (and registers it when asked).
"""

from usvs_dist.tracking.base import NullTracker, Tracker
from usvs_dist.tracking.mlflow_tracker import (
    MlflowTracker,
    download_run_files,
    finish_run,
    mark_stopped_trials,
    open_run,
    resolve_uri,
)
from usvs_dist.tracking.model_log import log_encoder_model
from usvs_dist.tracking.plots import loss_curves

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "download_run_files",
    "finish_run",
    "log_encoder_model",
    "mark_stopped_trials",
    "loss_curves",
    "open_run",
    "resolve_uri",
]
