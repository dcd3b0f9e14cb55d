"""A stand-in for MlflowTracker in evaluation-entry tests: records what the entry logs."""

from __future__ import annotations

from pathlib import Path


class RecordingTracker:
    """Class-level record of the last tracker the entry opened: metrics, artifacts, closed."""

    logged: dict[str, float] = {}
    artifacts: list[tuple[Path, str]] = []
    closed = False

    def __init__(self, uri: str, run_id: str):
        RecordingTracker.logged, RecordingTracker.artifacts, RecordingTracker.closed = {}, [], False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Keep the metrics."""
        RecordingTracker.logged.update(metrics)

    def log_artifact(self, path, folder) -> None:
        """Keep the artifact's path and folder."""
        RecordingTracker.artifacts.append((Path(path), folder))

    def close(self) -> None:
        """Mark the run closed."""
        RecordingTracker.closed = True
