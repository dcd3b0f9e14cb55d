"""`python -m usvs_dist.bench step [--rounds R] [--steps N] [--warmup W] [section.key=value ...]` and
`python -m usvs_dist.bench loss [--world W] [--batch B] [--dim D] [--device cpu|cuda]` and
`python -m usvs_dist.bench loader [SHARDS] [--clips N] [section.key=value ...]` and
`python -m usvs_dist.bench batches [SHARDS] [--world W] [--epochs E] [section.key=value ...]` and
`python -m usvs_dist.bench gpu [SHARDS] [--steps N] [--budget S] [--no-tests] [section.key=value ...]` and
`python -m usvs_dist.bench learning [--seed S] [--steps N] [--budget S] [--recipes R,...] [key=value ...]`."""

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
    step.add_argument("--rounds", type=int, default=30, help="timed rounds of 4 blocks (P R R P)")
    step.add_argument("--steps", type=int, default=5, help="steps per block")
    step.add_argument("--warmup", type=int, default=2, help="rounds run first and discarded")
    step.add_argument("overrides", nargs="*", metavar="section.key=value")
    loss = sub.add_parser("loss", help="gathered (B_local x N) vs naive global (N x N) losses: memory, time")
    loss.add_argument("--world", type=int, default=2, help="ranks W")
    loss.add_argument("--batch", type=int, default=128, help="B_local per rank")
    loss.add_argument("--dim", type=int, default=512, help="embedding size D")
    loss.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    loss.add_argument("--repeats", type=int, default=20)
    loader = sub.add_parser("loader", help="loader clips/s per decoder vs raw decoding and a naive PyAV loop")
    loader.add_argument("shards", nargs="?", help="local shard folder; omitted: the phantom cache")
    loader.add_argument("--clips", type=int, default=240, help="clips timed per path")
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("overrides", nargs="*", metavar="section.key=value")
    batches = sub.add_parser(
        "batches", help="same-scan pairs in the loader's global batches vs uniform sampling"
    )
    batches.add_argument("shards", nargs="?", help="local shard folder; omitted: the phantom cache")
    batches.add_argument("--world", type=int, default=2, help="ranks W")
    batches.add_argument("--epochs", type=int, default=2)
    batches.add_argument("overrides", nargs="*", metavar="section.key=value")
    gpu = sub.add_parser(
        "gpu",
        help="one CUDA GPU: gpu tests, the paper configs' runs, video-encoder TFLOP/s, loader headroom",
    )
    gpu.add_argument("shards", nargs="?", help="local shard folder; omitted: a 128 px phantom cache")
    gpu.add_argument("--steps", type=int, default=8, help="training steps per paper config")
    gpu.add_argument("--budget", type=float, default=480.0, help="seconds for all stages together")
    gpu.add_argument("--no-tests", dest="tests", action="store_false", help="skip `pytest -m gpu`")
    gpu.add_argument("overrides", nargs="*", metavar="section.key=value")
    learning = sub.add_parser(
        "learning", help="linear plane probe after each recipe's pretraining vs random init (phantom, CPU)"
    )
    learning.add_argument("--seed", type=int, default=0, help="training, loader and probe seed")
    learning.add_argument(
        "--steps",
        type=int,
        default=400,
        help="pretraining steps per recipe: the fixed work the figures are comparable by (4-7 min for "
        "the four recipes on 2 CPU cores)",
    )
    learning.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="a cap: seconds of pretraining for all recipes, shared equally; a recipe it cuts short is "
        "flagged, its figure not comparable",
    )
    learning.add_argument(
        "--recipes",
        default="usvs2020,isbi2020,dual2024,awcl2022",
        help="comma-separated recipes to pretrain",
    )
    learning.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    if args.bench in ("loader", "batches", "gpu") and args.shards and "=" in args.shards:
        args.overrides.insert(0, args.shards)  # no folder given: the first word is an override
        args.shards = None
    if args.bench == "loader":
        from usvs_dist.bench import loader as loader_bench

        loader_bench.run(args.shards, args.overrides, args.clips, args.repeats)
    elif args.bench == "batches":
        from usvs_dist.bench import batches as batches_bench

        batches_bench.run(args.shards, args.overrides, args.world, args.epochs)
    elif args.bench == "gpu":
        from usvs_dist.bench import gpu as gpu_bench

        return gpu_bench.run(args.shards, args.overrides, args.steps, args.budget, args.tests)
    elif args.bench == "learning":
        from usvs_dist.bench import learning as learning_bench

        recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
        try:
            learning_bench.run(recipes, args.seed, args.steps, args.budget, args.overrides)
        except ValueError as exc:
            print(f"bench learning: {exc}", file=sys.stderr)
            return 2
    elif args.bench == "step":
        from usvs_dist.bench import step as step_bench

        step_bench.run(args.overrides, args.rounds, args.steps, args.warmup)
    else:
        from usvs_dist.bench import loss as loss_bench

        loss_bench.run(args.world, args.batch, args.dim, args.device, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
