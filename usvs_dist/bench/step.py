"""`bench step`: one training step under Ray Train + DeepSpeed against a plain PyTorch loop.

Same tiny model, same fixed synthetic batch (data loading excluded), same clipping. The ratio is
the overhead the distributed path adds on one worker; the target is <= 1.10.

Method. Timing the two paths one after the other, in two processes, measured the machine rather
than the paths: on a 2-core machine the plain loop alone moved from 58 to 90 ms between runs,
and the ratio from 0.79 to 1.37. So both paths are built once in the same process, the Ray Train
worker, with the same torch thread count, and timed in alternating blocks of `block_steps` steps:

    warm-up rounds (discarded), then rounds of four blocks: plain, ray, ray, plain

Each step is timed on two clocks: wall time, and CPU time of the worker process (all its threads,
so gloo's collective threads count for DeepSpeed). With one torch thread a step is CPU-bound, and
CPU time leaves out the time other processes hold the core: on a loaded 2-core machine the rounds'
wall ratios spread over 0.77-1.91, their CPU ratios over 0.99-1.18. `step_ratio` is on CPU time;
`wall_ratio` is printed beside it; the two should agree when the worker has a core to itself.

A block's figure is the median of its step times (one step that stalls does not move it). A
round's ratio is (ray + ray) / (plain + plain) of its four blocks: the two paths' blocks sit at
the same mean time (ABBA), so a load that drifts linearly within the round, seconds long, cancels.
`step_ratio` is the median of the rounds' ratios, so a burst of load that hits one round does not
move it; their quartiles and extremes are printed as its spread.

What the ratio covers: everything `train_step` does per step in a Ray Train worker (DeepSpeed's
forward/backward/step, ZeRO gradient buckets, the fp32 loss cast) against `loss.backward()` and
`optimizer.step()` on the same module. The worker's environment (Ray's background threads, its
one OMP thread per CPU) is shared by both blocks, so it is not counted; reporting to Ray happens
every `train.log_every` steps in a job and is not part of a step here either.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from usvs_dist.config import RootConfig, from_dict, load_config, to_dict
from usvs_dist.dist.engine import build_optimizer
from usvs_dist.losses import check_objective, objective_parts, total_loss
from usvs_dist.models import build_model
from usvs_dist.train.step import BatchViews

PLAIN = "plain"
RAY = "ray"
# Wall time, and CPU time of the worker process (all its threads: gloo's too, Ray's idle ones):
# the second leaves out the time other processes hold the core.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
STEP_CLOCK = "cpu"


def synthetic_batch(cfg: RootConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch of the shapes the loader yields for this config."""
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    frames = round(cfg.phantom.clip_seconds * d.sample_rate) // d.hop_length + 1
    return {
        "video": torch.rand(d.batch_size, d.channels, d.num_frames, d.frame_size, d.frame_size, generator=g),
        "image": torch.rand(d.batch_size, d.channels, d.frame_size, d.frame_size, generator=g),
        "audio": torch.randn(d.batch_size, 1, d.n_mels, frames, generator=g),
        "image_label": torch.randint(0, 14, (d.batch_size,), generator=g),
    }


def synthetic_scans(cfg: RootConfig) -> dict:
    """The batch's scan ids and clip starts: runs of 4 adjacent clips of a scan (same-scan negatives)."""
    n = cfg.data.batch_size
    t0 = [cfg.phantom.clip_seconds * (k % 4) for k in range(n)]
    return {"scan": [f"bench-{k // 4}" for k in range(n)], "t0": torch.tensor(t0, dtype=torch.float64)}


@dataclasses.dataclass
class Interleaved:
    """Step times of the two paths, timed in alternating blocks (warm-up blocks excluded)."""

    order: list[str]
    """The path (PLAIN or RAY) of each timed block, in the order they ran."""
    blocks: list[list[float]]
    """Seconds of each step of each timed block, parallel to `order`."""

    def path_times(self, path: str) -> list[float]:
        """Every timed step's seconds of one path."""
        return [t for name, block in zip(self.order, self.blocks, strict=True) if name == path for t in block]

    def round_ratios(self) -> list[float]:
        """Per round of four blocks (ABBA): sum of the Ray blocks' medians / sum of the plain ones'."""
        ratios = []
        for i in range(0, len(self.order), 4):
            sums = {PLAIN: 0.0, RAY: 0.0}
            for path, block in zip(self.order[i : i + 4], self.blocks[i : i + 4], strict=True):
                sums[path] += statistics.median(block)
            assert self.order[i : i + 4].count(RAY) == 2, f"round {i // 4} holds {self.order[i : i + 4]}"
            ratios.append(sums[RAY] / sums[PLAIN])
        return ratios

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios: the step_ratio."""
        return statistics.median(self.round_ratios())


def interleave(
    plain: Callable[[], object],
    ray: Callable[[], object],
    rounds: int,
    block_steps: int,
    warmup_rounds: int,
    clocks: dict[str, Callable[[], float]],
) -> dict[str, Interleaved]:
    """Time two step functions in rounds of four blocks: plain, ray, ray, plain (ABBA).

    Args:
        plain: one step of the plain PyTorch loop.
        ray: one step of the distributed path.
        rounds: timed rounds; each runs two blocks of each path.
        block_steps: steps per block.
        warmup_rounds: rounds run first and discarded (allocator, caches, DeepSpeed buffers).
        clocks: name -> seconds (time.perf_counter, time.process_time; fake ones in tests).

    Returns:
        name -> the steps timed on that clock.
    """
    steps = {PLAIN: plain, RAY: ray}
    order: list[str] = []
    blocks: dict[str, list[list[float]]] = {name: [] for name in clocks}
    for r in range(warmup_rounds + rounds):
        for path in (PLAIN, RAY, RAY, PLAIN):
            times: dict[str, list[float]] = {name: [] for name in clocks}
            for _ in range(block_steps):
                starts = [clock() for clock in clocks.values()]
                steps[path]()
                ends = [clock() for clock in clocks.values()]
                for name, start, end in zip(clocks, starts, ends, strict=True):
                    times[name].append(end - start)
            if r >= warmup_rounds:
                order.append(path)
                for name in clocks:
                    blocks[name].append(times[name])
    return {name: Interleaved(order, blocks[name]) for name in clocks}


def plain_step(cfg: RootConfig) -> Callable[[], None]:
    """One step of a plain single-process PyTorch loop on a fixed batch, built once."""
    torch.manual_seed(cfg.train.seed)
    needs = check_objective(cfg.objective)
    model = build_model(cfg, needs.outputs)
    optimizer = build_optimizer(model, cfg)
    batch = {**synthetic_batch(cfg), **synthetic_scans(cfg)}
    make_views = BatchViews(cfg, needs)

    def step() -> None:
        inputs, targets = make_views(batch, torch.device("cpu"), torch.float32)
        loss = total_loss(objective_parts({**model(inputs), **targets}, cfg.objective, 0.5))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    return step


def _ray_worker(loop_config: dict) -> None:
    import ray.train

    from usvs_dist.dist.engine import build_engine
    from usvs_dist.train.step import train_step

    cfg = from_dict(loop_config["config"])
    # Ray already gives a worker one OMP thread per CPU; pinned so both paths surely share it.
    torch.set_num_threads(cfg.train.cpus_per_worker)
    plain = plain_step(cfg)
    torch.manual_seed(cfg.train.seed)
    needs = check_objective(cfg.objective)
    engine = build_engine(build_model(cfg, needs.outputs), cfg)
    batch = {**synthetic_batch(cfg), **synthetic_scans(cfg)}
    make_views = BatchViews(cfg, needs)
    result = interleave(
        plain,
        lambda: train_step(engine, batch, cfg, make_views, 0.5),
        loop_config["rounds"],
        loop_config["block_steps"],
        loop_config["warmup_rounds"],
        CLOCKS,
    )
    # Ray Train V2 returns metrics with a checkpoint only: the figures travel as one.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "times.json").write_text(
            json.dumps(
                {
                    "results": {name: dataclasses.asdict(r) for name, r in result.items()},
                    "threads": torch.get_num_threads(),
                }
            )
        )
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def interleaved_step_times(
    cfg: RootConfig, rounds: int, block_steps: int, warmup_rounds: int
) -> tuple[Interleaved, int]:
    """Both paths timed in one Ray Train worker running DeepSpeed; also its torch thread count."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "config": to_dict(cfg),
                "rounds": rounds,
                "block_steps": block_steps,
                "warmup_rounds": warmup_rounds,
            },
            scaling_config=ScalingConfig(
                num_workers=1,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            ),
            run_config=RunConfig(name="bench-step", storage_path=storage),
        )
        with trainer.fit().checkpoint.as_directory() as folder:
            figures = json.loads(Path(folder, "times.json").read_text())
    results = {name: Interleaved(**r) for name, r in figures["results"].items()}
    return results, int(figures["threads"])


def _spread(ratios: list[float]) -> tuple[float, float]:
    """Quartiles Q1, Q3 of the rounds' ratios (both the ratio itself with one round)."""
    if len(ratios) == 1:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return q1, q3


def report(
    cfg: RootConfig, results: dict[str, Interleaved], threads: int, warmup_rounds: int, print_fn=print
) -> float:
    """Print the table and the `step_ratio=...` line (from STEP_CLOCK); return the step_ratio."""
    first = results[STEP_CLOCK]
    print_fn(
        f"batch {cfg.data.batch_size} x {cfg.data.num_frames}x{cfg.data.frame_size}^2 video + "
        f"{cfg.data.n_mels}-mel audio, recipe {cfg.objective.recipe}, "
        f"model {cfg.model.video}/{cfg.model.audio} width {cfg.model.width}, "
        f"{threads} torch thread(s), both paths in one Ray worker process"
    )
    print_fn(
        f"{len(first.order) // 4} rounds of 4 blocks x {len(first.blocks[0])} steps "
        f"({' '.join(p[0].upper() for p in first.order[:4])}) after {warmup_rounds} warm-up rounds"
    )
    print_fn(f"{'path':<34}{'clock':>6}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}")
    medians: dict[tuple[str, str], float] = {}
    for path, name in ((PLAIN, "plain PyTorch"), (RAY, f"Ray Train + DeepSpeed ZeRO-{cfg.train.zero_stage}")):
        for clock, result in results.items():
            times = result.path_times(path)
            q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
            medians[clock, path] = 1000 * statistics.median(times)
            print_fn(
                f"{name:<34}{clock:>6}{medians[clock, path]:>11.1f}{1000 * q[0]:>9.1f}{1000 * q[-1]:>9.1f}"
            )
    for clock, result in results.items():
        ratios = result.round_ratios()
        q1, q3 = _spread(ratios)
        print_fn(
            f"per-round ratio, {clock} time: median {result.ratio:.3f}, IQR {q1:.3f}-{q3:.3f}, "
            f"min {min(ratios):.3f}, max {max(ratios):.3f} ({len(ratios)} rounds)"
        )
    ratio = first.ratio
    q1, q3 = _spread(first.round_ratios())
    others = " ".join(f"{clock}_ratio={r.ratio:.3f}" for clock, r in results.items() if clock != STEP_CLOCK)
    print_fn(
        f"step_ratio={ratio:.3f} ratio_q1={q1:.3f} ratio_q3={q3:.3f} "
        f"plain_ms={medians[STEP_CLOCK, PLAIN]:.1f} ray_ms={medians[STEP_CLOCK, RAY]:.1f} {others}".rstrip()
    )
    return ratio


def run(
    argv_overrides: list[str], rounds: int, block_steps: int, warmup_rounds: int, print_fn=print
) -> float:
    """Time both paths interleaved in one Ray worker, print the table, return the step_ratio."""
    cfg = load_config(None, ["train.num_workers=1", *argv_overrides])
    result, threads = interleaved_step_times(cfg, rounds, block_steps, warmup_rounds)
    return report(cfg, result, threads, warmup_rounds, print_fn)
