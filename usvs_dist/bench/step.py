"""`bench step`: one training step under Ray Train + DeepSpeed against a plain PyTorch loop.

Same tiny model, same fixed synthetic batch (data loading excluded), same thread count (Ray
gives a 1-CPU worker one OMP thread, so the plain loop is pinned to the same), same clipping.
The ratio is the overhead the distributed path adds on one worker; the target is <= 1.10.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from usvs_dist.config import RootConfig, from_dict, load_config, to_dict
from usvs_dist.dist.engine import build_optimizer
from usvs_dist.losses import check_objective, objective_parts, total_loss
from usvs_dist.models import build_model
from usvs_dist.train.step import BatchViews


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


def _time_steps(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def plain_step_times(cfg: RootConfig, steps: int, warmup: int) -> list[float]:
    """Seconds per step of a single-process PyTorch loop."""
    torch.set_num_threads(cfg.train.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)
    needs = check_objective(cfg.objective)
    model = build_model(cfg, needs.outputs)
    optimizer = build_optimizer(model, cfg)
    batch = synthetic_batch(cfg)
    make_views = BatchViews(cfg, needs)

    def step() -> None:
        inputs, targets = make_views(batch, torch.device("cpu"), torch.float32)
        loss = total_loss(objective_parts({**model(inputs), **targets}, cfg.objective, 0.5))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    return _time_steps(step, steps, warmup)


def _ray_worker(loop_config: dict) -> None:
    import ray.train

    from usvs_dist.dist.engine import build_engine
    from usvs_dist.train.step import train_step

    cfg = from_dict(loop_config["config"])
    torch.manual_seed(cfg.train.seed)
    needs = check_objective(cfg.objective)
    engine = build_engine(build_model(cfg, needs.outputs), cfg)
    batch = synthetic_batch(cfg)
    make_views = BatchViews(cfg, needs)
    times = _time_steps(
        lambda: train_step(engine, batch, cfg, make_views, 0.5), loop_config["steps"], loop_config["warmup"]
    )
    # Ray Train V2 returns metrics with a checkpoint only: the figures travel as one.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "times.json").write_text(
            json.dumps({"step_times": times, "threads": torch.get_num_threads()})
        )
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_deepspeed_step_times(cfg: RootConfig, steps: int, warmup: int) -> tuple[list[float], int]:
    """Seconds per step inside one Ray Train worker running DeepSpeed, and its torch thread count."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"config": to_dict(cfg), "steps": steps, "warmup": warmup},
            scaling_config=ScalingConfig(
                num_workers=1,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            ),
            run_config=RunConfig(name="bench-step", storage_path=storage),
        )
        with trainer.fit().checkpoint.as_directory() as folder:
            figures = json.loads(Path(folder, "times.json").read_text())
    return list(figures["step_times"]), int(figures["threads"])


def run(argv_overrides: list[str], steps: int, warmup: int, print_fn=print) -> float:
    """Time both paths, print the table, return the ratio of medians (Ray + DeepSpeed / plain)."""
    cfg = load_config(None, ["train.num_workers=1", *argv_overrides])
    ray_times, threads = ray_deepspeed_step_times(cfg, steps, warmup)
    plain_times = plain_step_times(cfg, steps, warmup)
    rows = [
        ("plain PyTorch (1 process)", plain_times),
        (f"Ray Train + DeepSpeed ZeRO-{cfg.train.zero_stage}", ray_times),
    ]
    print_fn(
        f"batch {cfg.data.batch_size} x {cfg.data.num_frames}x{cfg.data.frame_size}^2 video + "
        f"{cfg.data.n_mels}-mel audio, recipe {cfg.objective.recipe}, "
        f"model {cfg.model.video}/{cfg.model.audio} width {cfg.model.width}, "
        f"{threads} torch thread(s), {steps} timed steps after {warmup} warm-up"
    )
    print_fn(f"{'path':<34}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}")
    for name, times in rows:
        q = statistics.quantiles(times, n=10)
        print_fn(f"{name:<34}{1000 * statistics.median(times):>11.1f}{1000 * q[0]:>9.1f}{1000 * q[-1]:>9.1f}")
    ratio = statistics.median(ray_times) / statistics.median(plain_times)
    print_fn(f"step_ratio={ratio:.3f}")
    return ratio
