"""TrainState: everything besides the DeepSpeed engine that a checkpoint must restore."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Step counter, samples seen (global, over all ranks) and the world size that saved it."""

    step: int = 0
    samples: int = 0
    world_size: int = 0

    def save(self, folder: Path) -> None:
        """Write train_state.json into a checkpoint folder."""
        (folder / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        """Read train_state.json from a checkpoint folder."""
        fields = json.loads((folder / STATE_FILE).read_text())
        return cls(**{k: fields[k] for k in ("step", "samples", "world_size") if k in fields})
