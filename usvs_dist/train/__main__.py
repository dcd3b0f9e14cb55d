"""`python -m usvs_dist.train [--config F] [section.key=value ...]`: one pretraining run.

With no arguments it runs the CPU quickstart on embedded defaults (== configs/quickstart.yaml):
phantom shards built into a local cache, local Ray, 2 workers with DeepSpeed ZeRO-2, MLflow on
sqlite:///mlruns.db in the working directory.
"""

from __future__ import annotations

import argparse
import logging
import sys

from usvs_dist.config import ConfigError, load_config, redact


def main(argv: list[str] | None = None) -> int:
    """Parse, validate config and shards (exit 2 on bad input, before Ray starts), train, print where
    results are."""
    p = argparse.ArgumentParser(
        prog="python -m usvs_dist.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config; omitted: embedded defaults (the quickstart)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        from usvs_dist.phantom import resolve_shards
        from usvs_dist.train.launch import check_config, check_data

        check_config(cfg)  # names and recipe are refused before the phantom is built
        data = check_data(cfg, resolve_shards(cfg))
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from usvs_dist.train.launch import run

    result = run(cfg, data=data)
    print(f"MLflow run id: {result.mlflow_run_id}")
    print(f"MLflow tracking URI: {redact(result.tracking_uri)}")
    print(f"checkpoint: {result.checkpoint_path}")
    print(f"final metrics: {result.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
