"""A Ray Train run over the cluster at RAY_ADDRESS: each rank reports its node, its part of a
gathered InfoNCE (loss and input gradients) and the clips its loader reads in epoch 0.

python tests/cluster/probe.py SHARDS OUT_JSON   (run by tests/cluster/test_two_nodes.py)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from usvs_dist.config import DataConfig
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.losses import info_nce

B, D, TAU = 4, 6, 0.1


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed global batch the ranks split (rank r holds rows r*B .. r*B+B-1)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * B, D, generator=g), torch.randn(2 * B, D, generator=g)


def worker(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x, y = global_batch()
    xr = x[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    yr = y[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    loss = info_nce(xr, yr, TAU)
    loss.backward()
    loader = EpochLoader(DataConfig(batch_size=2, loader_workers=0), config["shards"], rank, world)
    keys = [k for batch in loader.epoch(0) for k in batch["__key__"]]
    result = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "loss": loss.item(),
        "grad_x": xr.grad.tolist(),
        "grad_y": yr.grad.tolist(),
        "keys": keys,
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, f"rank_{rank}.json").write_text(json.dumps(result))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def main(shards: str, out: str) -> None:
    ray.init()
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            worker,
            train_loop_config={"shards": shards},
            scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD"),
            run_config=RunConfig(name="two-node-probe", storage_path=storage),
        )
        with trainer.fit().checkpoint.as_directory() as folder:
            ranks = [json.loads(Path(folder, f"rank_{r}.json").read_text()) for r in range(2)]
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    Path(out).write_text(json.dumps({"ranks": ranks, "nodes": nodes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
