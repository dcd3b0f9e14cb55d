"""TrainState: everything besides the DeepSpeed engine that a checkpoint must restore."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Step counter, samples seen (global, over all ranks), loader epochs, who saved it, what it reported."""

    step: int = 0
    samples: int = 0
    loader_epoch: int = 0
    """Loader epochs completed: a resumed loader draws as from this epoch on."""
    world_size: int = 0
    last_report: dict = field(default_factory=dict)
    """The metrics reported with this checkpoint, reported again when a finished run is rerun."""

    def save(self, folder: Path) -> None:
        """Write train_state.json into a checkpoint folder."""
        (folder / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        """Read train_state.json from a checkpoint folder."""
        fields = json.loads((folder / STATE_FILE).read_text())
        names = ("step", "samples", "loader_epoch", "world_size", "last_report")
        return cls(**{k: fields[k] for k in names if k in fields})
