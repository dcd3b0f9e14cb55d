"""`python -m usvs_dist.tune --config configs/sweep_<recipe>.yaml [--resume] [--storage DIR] [--quiet]`.

A sweep file holds a `sweep:` section (its keys below) and a `base:` training config (the keys of
`python -m usvs_dist.train --help`). Each trial's rank 0 prints the training progress lines as
the base's train.console says (default: on); --quiet turns them off for every trial.
"""

from __future__ import annotations

import argparse
import logging
import sys

from usvs_dist.config import ConfigError, apply_overrides
from usvs_dist.config.describe import HelpFormatter, describe


def parser() -> argparse.ArgumentParser:
    """The entry's arguments; the epilog lists the `sweep:` section's keys (from SweepConfig)."""
    from usvs_dist.tune.space import SweepConfig

    p = argparse.ArgumentParser(
        prog="python -m usvs_dist.tune",
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="sweep file keys:\n\n" + describe(SweepConfig, SweepConfig.KEY),
    )
    p.add_argument("--config", required=True, help="sweep file: sweep + base sections")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    p.add_argument("--storage", default="ray_results", help="where Tune keeps the sweep's state")
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines from the trials (train.console=false)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Validate the sweep (exit 2 naming the key), then run or resume it."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from usvs_dist.tune.space import load_sweep

    try:
        sweep = load_sweep(args.config)
        if args.quiet:
            sweep.base = apply_overrides(sweep.base, ["train.console=false"])
        from usvs_dist.train.preflight import check_config

        check_config(sweep.base)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from usvs_dist.phantom import resolve_shards
    from usvs_dist.tune.sweep import run_sweep

    # Built once here, not concurrently in every trial.
    sweep.base.data.shards = resolve_shards(sweep.base)
    result = run_sweep(sweep, args.storage, resume=args.resume)
    print(f"MLflow parent run id: {result['parent_run_id']}")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
