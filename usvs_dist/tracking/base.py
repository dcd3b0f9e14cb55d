"""The tracker interface and the do-nothing tracker used on ranks other than 0."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    """What the training loop logs through."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar metrics at a step."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file to the run."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set the run's tags (what a run used, found by MLflow's search)."""

    def close(self) -> None:
        """Flush and release resources."""


class NullTracker:
    """Tracker that records nothing (ranks other than 0)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""
