"""`bench learning`: does pretraining teach the encoders what the planes are, recipe by recipe?

Corpus: a phantom (sharding/phantom.py) of its own, built once into the phantom cache: planes
that differ only in the arrangement of the same structures, under probe pose, gain and shadow
nuisance, so a randomly initialised encoder's features do not separate them. Its patients are
split train/test only (CORPUS), so the held-out split has several scans to fold by.

Per recipe: tiny encoders pretrained on the train split in this process, with the recipe's views,
objective, optimizer and learning-rate schedule as training builds them, in a plain PyTorch loop
(no Ray, no DeepSpeed: the figure is about the objective, and start-up would eat the budget).
Then the linear plane probe of `eval.tasks.planes` (k-fold by scan, macro-F1) on the test split's
clips, for the pretrained encoder (video, else image) and for a randomly initialised one of the
same architecture. One line per recipe; the last line is `random_f1=<x> best_gain=<y>`: the
random video encoder's F1, and the largest gain of a recipe that learns without plane labels
(awcl2022's positives are plane labels; its line is printed, it does not count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from usvs_dist.config import RootConfig, load_config
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.dist.engine import build_optimizer, lr_factor
from usvs_dist.eval.clips import ClipSet, load_clips
from usvs_dist.eval.encoders import Encoders, build_encoders
from usvs_dist.eval.tasks import planes
from usvs_dist.losses import check_objective, objective_parts, total_loss
from usvs_dist.models import build_model
from usvs_dist.phantom import ensure_phantom_shards
from usvs_dist.train.step import BatchViews, reads_narration

RECIPES = ("usvs2020", "isbi2020", "dual2024", "awcl2022")
RAW_FPS = 5.0
"""The corpus is synthesized at the rate it is stored at: a third of the phantom's 15 fps work."""
CORPUS = (
    "phantom.scans=16",
    "phantom.seconds=180",
    "phantom.fps=5",
    "phantom.size=64",
    "phantom.split_fractions=[0.6,0.0,0.4]",
)
"""The corpus: 16 scans of 3 min (1440 clips of 2 s), stored at 5 fps, 64 px; patients split
train/test only (no val: nothing is tuned), so the held-out split has several scans to fold by."""
TINY = (
    "model.video=tiny3d",
    "model.audio=tiny2d",
    "model.image=tiny_resnet",
    "model.width=16",
    "model.embed_dim=64",
    "data.batch_size=16",
    "data.num_frames=8",
    "data.frame_size=64",
    "data.loader_workers=1",
    "optim.lr=0.001",
    "optim.warmup_steps=20",
    "eval.plane_splits=[test]",
    "eval.folds=5",
    "eval.max_clips=2000",
)
"""Tiny encoders and their training: what fits the budget on two CPU cores."""


@dataclass
class Pretrained:
    """A recipe's pretraining: its encoders, the steps it took, seconds and the last loss."""

    encoders: Encoders
    steps: int
    seconds: float
    loss: float
    uses_labels: bool


def bench_config(recipe: str, seed: int, overrides: list[str]) -> RootConfig:
    """The bench's config of one recipe: corpus, tiny encoders, seeds, then the caller's overrides."""
    seeds = [f"train.seed={seed}", f"data.seed={seed}", f"eval.seed={seed}"]
    return load_config(None, [*CORPUS, *TINY, *seeds, f"objective.recipe={recipe}", *overrides])


def corpus(cfg: RootConfig, log=print) -> str:
    """Shard folder of the bench's phantom corpus (built into the cache on first use)."""
    return cfg.data.shards or str(ensure_phantom_shards(cfg.phantom, log=log, raw_fps=RAW_FPS).resolve())


def pretrain(cfg: RootConfig, shards: str, steps: int, seconds: float) -> Pretrained:
    """Pretrain the recipe's model for `steps` optimizer steps or `seconds`, whichever ends first."""
    torch.manual_seed(cfg.train.seed)
    needs = check_objective(cfg.objective)
    model = build_model(cfg, needs.outputs)
    optimizer = build_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.optim, steps))
    loader = EpochLoader(cfg.data, shards, 0, 1, audio=reads_narration(needs))
    make_views = BatchViews(cfg, needs, loader.vocabulary)
    cpu = torch.device("cpu")
    model.train()
    start = time.perf_counter()
    done, loss = 0, float("nan")
    batches = loader.batches(cpu)
    try:
        for batch in batches:
            inputs, targets = make_views(batch, cpu, torch.float32)
            parts = objective_parts({**model(inputs), **targets}, cfg.objective, done / steps)
            total = total_loss(parts)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            schedule.step()
            done, loss = done + 1, float(total.detach())
            if done >= steps or time.perf_counter() - start >= seconds:
                break
    finally:
        batches.close()  # stops the loader's worker process
    encoders = Encoders(
        cfg, dict(model.encoders.items()), dict(model.projections.items()), cfg.objective.recipe
    )
    return Pretrained(encoders.eval(), done, time.perf_counter() - start, loss, needs.needs_labels)


def probe_f1(enc: Encoders, clips: ClipSet) -> dict[str, float]:
    """Linear-probe macro-F1 by modality (video, image) of the encoders present."""
    metrics, _ = planes(enc, clips, ("linear",))
    return {
        m: metrics[f"planes/{m}/linear/f1"] for m in ("video", "image") if f"planes/{m}/linear/f1" in metrics
    }


def run(
    recipes: list[str],
    seed: int,
    steps: int,
    budget: float,
    overrides: list[str],
    print_fn: Callable[[str], None] = print,
) -> tuple[float, float]:
    """Build the corpus, pretrain each recipe, probe it and a random twin; return (random_f1, best_gain).

    `steps` is the fixed work that makes figures comparable across machines and loads; `budget`
    (seconds for all the recipes' pretraining together, shared equally) is a cap, and a recipe it
    stops before `steps` is flagged on its line.
    """
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"--recipes: unknown {', '.join(unknown)}; expected some of {', '.join(RECIPES)}")
    start = time.perf_counter()
    cfg = bench_config(recipes[0], seed, overrides)
    shards = corpus(cfg, log=lambda *_: None)
    built = time.perf_counter() - start
    clips = load_clips(cfg.data, shards, list(cfg.eval.plane_splits), cfg.eval.max_clips, audio=False)
    loaded = time.perf_counter() - start - built
    torch.manual_seed(cfg.eval.seed)  # build_encoders draws from the global generator
    random = probe_f1(build_encoders(cfg, None, "random init"), clips)
    print_fn(
        f"corpus: {len(clips)} clips of {len(set(clips.scan))} scans in {', '.join(cfg.eval.plane_splits)}, "
        f"{cfg.eval.folds}-fold linear probe by scan; corpus {built:.0f} s, clips {loaded:.0f} s; "
        "random init " + ", ".join(f"{m} F1 {f:.3f}" for m, f in random.items())
    )
    best = float("-inf")
    for recipe in recipes:
        cfg = bench_config(recipe, seed, overrides)
        done = pretrain(cfg, shards, steps, budget / len(recipes))
        t0 = time.perf_counter()
        trained = probe_f1(done.encoders, clips)
        modality = "video" if "video" in trained else "image"
        gain = trained[modality] - random[modality]
        if not done.uses_labels:
            best = max(best, gain)
        print_fn(
            f"{recipe:<9} {modality:<5} pretrained_f1={trained[modality]:.3f} "
            f"random_f1={random[modality]:.3f} gain={gain:+.3f} steps={done.steps} loss={done.loss:.3f} "
            f"train_s={done.seconds:.0f} "
            f"probe_s={time.perf_counter() - t0:.0f}"
            + (" (plane labels as positives: not counted)" if done.uses_labels else "")
            + (f" (cut by --budget before {steps} steps: not comparable)" if done.steps < steps else "")
        )
    print_fn(
        f"random_f1={random['video']:.3f} best_gain={best:+.3f} seconds={time.perf_counter() - start:.0f}"
    )
    return random["video"], best
