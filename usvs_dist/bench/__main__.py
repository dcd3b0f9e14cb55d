"""`python -m usvs_dist.bench step [--steps N] [--warmup N] [section.key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; its last printed line holds the ratios."""
    p = argparse.ArgumentParser(prog="python -m usvs_dist.bench", description=__doc__)
    sub = p.add_subparsers(dest="bench", required=True)
    step = sub.add_parser(
        "step", help="a training step: Ray Train + DeepSpeed vs plain PyTorch (1 CPU worker)"
    )
    step.add_argument("--steps", type=int, default=30)
    step.add_argument("--warmup", type=int, default=5)
    step.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    from usvs_dist.bench import step as step_bench

    step_bench.run(args.overrides, args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
