"""`python -m usvs_dist.export (--checkpoint PATH | --run ID [--tracking-uri URI]) --out DIR
[--format native|torchvision] [--modality M ...] [--overwrite]`.

Writes a run's trained encoders as safetensors with preprocessing.json, export.json and
model_card.md (see usvs_dist.export.write). `--format torchvision`: state dicts that
torchvision's `r2plus1d_18()` / `resnet18()` load with strict=True (zero, untrained fc; a grey
stem expanded to RGB); only for those encoders. Exit status 2 on bad arguments or sources.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from usvs_dist.config import ConfigError
from usvs_dist.eval.encoders import ENCODERS_FILE
from usvs_dist.export.write import write_export
from usvs_dist.models import ENCODERS
from usvs_dist.train.state import STATE_FILE
from usvs_dist.trained import DEFAULT_TRACKING_URI, load_trained


def _step(source: str) -> int | None:
    """The checkpoint's step when its train_state.json lies beside encoders.pt."""
    file = Path(source).parent / STATE_FILE
    if Path(source).name != ENCODERS_FILE or not file.is_file():
        return None
    return int(json.loads(file.read_text()).get("step", 0)) or None


def main(argv: list[str] | None = None) -> int:
    """CLI entry; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m usvs_dist.export", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a pretraining run")
    src.add_argument("--checkpoint", help="a training checkpoint folder (or an encoders.pt with --config)")
    p.add_argument("--config", help="the run's resolved config, when --checkpoint is a bare encoders.pt")
    p.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help="MLflow store of --run (MLFLOW_TRACKING_URI wins)",
    )
    p.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    p.add_argument(
        "--format",
        choices=("native", "torchvision"),
        default="native",
        help="native: our modules' state dicts; torchvision: loadable by torchvision's constructors "
        "(r2plus1d_18, resnet18 only)",
    )
    p.add_argument(
        "--modality", action="append", choices=list(ENCODERS), help="repeatable; default: every encoder"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trained = load_trained(
                args.run, args.checkpoint, config=args.config, tracking_uri=args.tracking_uri, dest=Path(tmp)
            )
        enc = trained.encoders
        out = write_export(enc, args.out, args.format, args.modality, _step(enc.source), args.overwrite)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {', '.join(args.modality or enc.encoders)} encoder(s) ({args.format}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
