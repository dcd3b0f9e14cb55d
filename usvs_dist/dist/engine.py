"""One function turning (model, config) into a DeepSpeed engine; the DeepSpeed config lives here."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from usvs_dist.config.schema import OptimConfig, RootConfig
from usvs_dist.dist.collectives import global_batchnorm


def deepspeed_config(cfg: RootConfig) -> dict[str, Any]:
    """The DeepSpeed config of a run.

    Micro-batch and accumulation are set, not train_batch_size, so the worker count can change.
    gradient_clipping is always explicit: DeepSpeed >= 0.19.3 clips at 1.0 when it is absent.
    Offload settings, when added, belong inside zero_optimization (ignored at top level).
    """
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": cfg.train.use_gpu},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: nn.Module, cfg: RootConfig) -> torch.optim.Optimizer:
    """A torch optimizer over exactly the parameters handed to DeepSpeed (ZeRO 1/2 need that)."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9)


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """LR multiplier after `step` optimizer steps: linear warmup, then cosine or constant.

    Warmup reaches 1 at step `warmup_steps` and starts above 0 so the first step is not wasted;
    cosine ends at `min_lr_ratio` on the run's last step.
    """
    if step < optim.warmup_steps:
        return (step + 1) / (optim.warmup_steps + 1)
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - 1 - optim.warmup_steps))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def distribute_batchnorm(model: nn.Module, sync_bn: bool) -> nn.Module:
    """The model's BatchNorm layers made to normalise over the global batch, in place.

    Always: each nn.BatchNorm1d (the projection and pretext heads' BatchNorm over [B, D]
    features) becomes a GlobalBatchNorm1d, on gloo and NCCL, so the gathered losses equal one
    process on the global batch for the heads too, and positives no longer share statistics that
    most negatives do not. With `model.sync_bn` every BatchNorm (the encoders' 2d/3d ones too)
    becomes torch.nn.SyncBatchNorm instead: a collective per layer per forward, CUDA only (config
    validation refuses it on CPU). Parameters, buffers and state-dict keys stay the same, so
    checkpoints and encoders.pt read either way. Models stay plain modules (models/ does not
    import dist/); this is where they meet the process group.
    """
    if sync_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return global_batchnorm(model)


def build_engine(model: nn.Module, cfg: RootConfig):
    """deepspeed.initialize on an already-initialised process group (Ray Train made it).

    The model's BatchNorm is made global first (`distribute_batchnorm`, in place). The LR
    schedule is a torch LambdaLR handed to DeepSpeed, which steps it at each optimizer step (not
    micro-step) and saves it in its checkpoints.
    """
    model = distribute_batchnorm(model, cfg.model.sync_bn)
    if not cfg.train.use_gpu:
        # Must be set before deepspeed is first imported in this process.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    optimizer = build_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.optim, cfg.train.steps)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(cfg),
        dist_init_required=False,
    )
    return engine


def gathered_params(model: nn.Module, zero_stage: int):
    """Context in which every parameter is whole on every rank (ZeRO-3 partitions them)."""
    import contextlib

    if zero_stage < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
