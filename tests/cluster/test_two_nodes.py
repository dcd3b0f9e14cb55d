"""Two Ray nodes on one machine: workers on different nodes, gathered negatives across them,
shards split by node, and the training entry placed one worker per node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cluster.probe import TAU, global_batch
from tests.train.runner import REPO, TINY, client_for, cluster_env
from usvs_dist.dist.collectives import free_port
from usvs_dist.losses import info_nce

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _run(cmd: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def two_nodes(tmp_path):
    """`ray start --head` (resource node_a) and a second `ray start --address` (node_b); stopped after."""
    env = cluster_env(tmp_path)  # token auth on, as Ray 2.60's default
    env["PYTHONPATH"] = str(REPO)
    port = free_port()
    try:
        _run(
            [
                *RAY,
                "start",
                "--head",
                f"--port={port}",
                f"--dashboard-port={free_port()}",
                "--num-cpus=2",
                '--resources={"node_a": 2}',
                "--disable-usage-stats",
            ],
            env,
        )
        _run([*RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"node_b": 2}'], env)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_two_nodes_gather_negatives_split_shards_and_place_one_worker_each(
    two_nodes, phantom_shards, tmp_path
):
    out = tmp_path / "probe.json"
    _run(
        [sys.executable, str(REPO / "tests" / "cluster" / "probe.py"), str(phantom_shards), str(out)],
        two_nodes,
    )
    probe = json.loads(out.read_text())
    ranks, nodes = probe["ranks"], probe["nodes"]
    assert len(nodes) == 2 and {"node_a", "node_b"} <= {r for res in nodes.values() for r in res}
    assert ranks[0]["node_id"] != ranks[1]["node_id"] and {r["node_id"] for r in ranks} == set(nodes)

    # Gathered negatives across nodes: the ranks' mean loss and their input gradients equal one
    # process on the global batch (each rank's gradient is W x the global one before averaging).
    x, y = global_batch()
    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss = info_nce(xs, ys, TAU)
    loss.backward()
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), abs=1e-5)
    grad_x = torch.cat([torch.tensor(r["grad_x"]) for r in ranks]) / 2
    grad_y = torch.cat([torch.tensor(r["grad_y"]) for r in ranks]) / 2
    assert torch.allclose(grad_x, xs.grad, atol=1e-5) and torch.allclose(grad_y, ys.grad, atol=1e-5)

    # Shards split by node: no clip read by both nodes in the epoch, and the same count on each.
    keys0, keys1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert keys0 and not keys0 & keys1 and len(ranks[0]["keys"]) == len(ranks[1]["keys"])

    # The training entry on the cluster, one worker per node.
    _run(
        [
            sys.executable,
            "-m",
            "usvs_dist.train",
            f"data.shards={phantom_shards}",
            *TINY,
            "train.steps=2",
            "train.checkpoint_every=2",
            "train.placement_strategy=STRICT_SPREAD",
            f"train.storage_path={tmp_path / 'ray_results'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}",
            "train.run_name=two-nodes",
        ],
        two_nodes,
        cwd=tmp_path,
    )
    checkpoints = sorted(
        p for p in (tmp_path / "ray_results" / "two-nodes").glob("checkpoint_*") if p.is_dir()
    )
    ranks_on = [
        torch.load(checkpoints[-1] / "rng" / f"rank_{r}.pt", weights_only=False)["node_id"] for r in range(2)
    ]
    assert set(ranks_on) == set(nodes)
    runs = client_for(tmp_path).search_runs(
        [client_for(tmp_path).get_experiment_by_name("usvs_dist").experiment_id]
    )
    assert runs[0].info.status == "FINISHED"
