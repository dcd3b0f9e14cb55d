"""TrainState: everything besides the DeepSpeed engine that a checkpoint must restore."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Step counter and samples seen (global, over all ranks)."""

    step: int = 0
    samples: int = 0

    def save(self, folder: Path) -> None:
        """Write train_state.json into a checkpoint folder."""
        (folder / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        """Read train_state.json from a checkpoint folder."""
        return cls(**json.loads((folder / STATE_FILE).read_text()))
