"""`python -m usvs_dist.train [--config F] [--print-config] [--dry-run] [--quiet] [section.key=value ...]`:
one pretraining run.

With no arguments it runs the CPU quickstart on embedded defaults (== configs/quickstart.yaml):
phantom shards built into a local cache, local Ray, 2 workers with DeepSpeed ZeRO-2, MLflow on
sqlite:///mlruns.db in the working directory. Rank 0 prints a progress line every
train.log_every steps (--quiet: none).

--print-config prints the resolved config (file, then overrides; values read from the
environment shown as their ${oc.env:...} expression, URL credentials redacted) and exits.
--dry-run makes every check a run makes before Ray starts (names, recipe, shards and their index,
the epoch plan), prints a summary and exits, without starting Ray or DeepSpeed; with an empty
data.shards it checks the phantom cache and does not build it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from usvs_dist.config import ConfigError, RootConfig, load_config, redact, redacted, to_yaml
from usvs_dist.config.describe import HelpFormatter, describe


def parser() -> argparse.ArgumentParser:
    """The entry's arguments; the epilog lists every config key (generated from the schema)."""
    p = argparse.ArgumentParser(
        prog="python -m usvs_dist.train",
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="config keys (section.key=value overrides, or the same keys in a --config YAML):\n\n"
        + describe(),
    )
    p.add_argument("--config", help="YAML config; omitted: embedded defaults (the quickstart)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, shards and epoch plan as a run would before Ray starts; print a summary, exit",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines from rank 0 (train.console=false)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def _shards(cfg: RootConfig, dry_run: bool) -> tuple[str | None, str]:
    """(shard folder or None, a note): `data.shards`, or the phantom's, which a run builds on first
    use and a dry run only looks for in the cache."""
    from usvs_dist.phantom import phantom_dir, resolve_shards

    if cfg.data.shards:
        return resolve_shards(cfg), ""
    cached = phantom_dir(cfg.phantom) / "shards"
    if not dry_run:
        return resolve_shards(cfg), ""
    if (cached / "index.json").is_file():
        return str(cached.resolve()), "the phantom, cached"
    return None, f"phantom: would be built at {cached.parent}"


def main(argv: list[str] | None = None) -> int:
    """Parse, validate config and shards (exit 2 on bad input, before Ray starts), train, print where
    results are; --print-config and --dry-run exit 0 before Ray."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = [*args.overrides, *(["train.console=false"] if args.quiet else [])]
    try:
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(to_yaml(redacted(cfg)), end="")
            if not args.dry_run:
                return 0
        from usvs_dist.train.preflight import check_config, check_data, dry_run_summary

        check_config(cfg)  # names and recipe are refused before the phantom is built
        shards, note = _shards(cfg, args.dry_run)
        data = check_data(cfg, shards) if shards is not None else None
        if args.dry_run:
            print(dry_run_summary(cfg, data, note))
            return 0
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
