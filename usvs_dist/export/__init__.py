"""Trained encoders out of usvs_dist: safetensors, preprocessing.json and a model card.

- `python -m usvs_dist.export (--checkpoint PATH | --run ID) --out DIR [--format native|torchvision]`
  writes the folder (`write.write_export`; its layout is described there).
- `load_encoder(path_or_run, modality)` -> (encoder, preprocessing) from such a folder, a
  training checkpoint or an MLflow run (also `usvs_dist.load_encoder`).
"""

from usvs_dist.export.load import load_encoder
from usvs_dist.export.write import write_export

__all__ = ["load_encoder", "write_export"]
