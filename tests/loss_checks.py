"""Checks every loss passes besides its own reference test: a few SGD steps lower it, and two
gloo ranks equal one process on the concatenated batch (docs/methods.md, "Gathered negatives").

In the gloo check each rank holds B rows of every input; the first input goes through a shared
linear layer so parameter gradients are compared too (averaged over ranks, as DeepSpeed does).
The rank processes are spawned once per test session and join a new process group per check:
starting a process (and importing torch in it) costs seconds, a process group milliseconds.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist

from usvs_dist.dist.collectives import free_port

LossFn = Callable[..., torch.Tensor | tuple]
"""loss_fn(first_projected_BD, *other_inputs_B..., labels_B or None) -> loss or (loss, extras)."""


def sgd_losses(
    loss_at: Callable[[int], torch.Tensor | tuple], params, steps: int, lr: float = 0.5
) -> list[float]:
    """The loss at each of `steps` plain SGD steps on `params`; loss_at(step) builds the loss."""
    opt = torch.optim.SGD(list(params), lr=lr)
    losses = []
    for step in range(steps):
        loss = _scalar(loss_at(step))
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def _scalar(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


GROUP_TIMEOUT = timedelta(seconds=120)
"""A rank whose peer failed before a collective raises after this, instead of waiting 30 min."""
_ranks: dict[int, ProcessPoolExecutor] = {}


def _rank_processes(world: int) -> ProcessPoolExecutor:
    """`world` spawned processes, kept for the session (the executor ends them at exit).

    Each check submits one task per rank; a process blocked in a rank's collectives takes no
    second task, so the `world` tasks run on `world` different processes.
    """
    if world not in _ranks:
        _ranks[world] = ProcessPoolExecutor(world, mp_context=multiprocessing.get_context("spawn"))
    return _ranks[world]


def _worker(rank, world, port, loss_fn, inputs, labels, weight) -> dict:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=GROUP_TIMEOUT)
    try:
        b = inputs[0].shape[0] // world
        rows = slice(rank * b, (rank + 1) * b)
        local = [x[rows].clone().requires_grad_(x.is_floating_point()) for x in inputs]
        proj = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        proj.weight.data.copy_(weight)
        loss = _scalar(loss_fn(proj(local[0]), *local[1:], None if labels is None else labels[rows]))
        loss.backward()
        dist.all_reduce(proj.weight.grad)
        proj.weight.grad /= world
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        return {
            "loss": torch.stack(losses).mean(),
            "grads": [x.grad.clone() if x.grad is not None else None for x in local],
            "gw": proj.weight.grad.clone(),
        }
    finally:
        dist.destroy_process_group()


def assert_two_ranks_match_one(
    loss_fn: LossFn,
    inputs: list[torch.Tensor],
    labels: torch.Tensor | None = None,
    world: int = 2,
    atol: float = 1e-5,
) -> None:
    """Loss, input gradients and parameter gradients of `world` ranks equal one process's (atol)."""
    d = inputs[0].shape[1]
    weight = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d**0.5
    port = free_port()
    ranks = [
        _rank_processes(world).submit(_worker, r, world, port, loss_fn, inputs, labels, weight)
        for r in range(world)
    ]
    out = [rank.result() for rank in ranks]

    full = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    proj = torch.nn.Linear(d, d, bias=False)
    proj.weight.data.copy_(weight)
    loss = _scalar(loss_fn(proj(full[0]), *full[1:], labels))
    loss.backward()

    assert abs(out[0]["loss"].item() - loss.item()) <= atol, (out[0]["loss"].item(), loss.item())
    b = inputs[0].shape[0] // world
    for r in range(world):
        rows = slice(r * b, (r + 1) * b)
        for k, x in enumerate(full):
            if x.grad is None:
                continue
            # A rank's input gradient is W x the global one before the ranks' averaging.
            assert torch.allclose(out[r]["grads"][k] / world, x.grad[rows], atol=atol), (r, k)
        assert torch.allclose(out[r]["gw"], proj.weight.grad, atol=atol), r


# Same-scan negatives (usvs_dist.losses.negatives): ten clips of four scans, split 5 + 5 over two
# ranks so that same-scan pairs cross ranks. Start times differ by 2 s (adjacent clips), 4 s (on
# the window's edge), 4.5 s and more (beyond it); clips 3 and 7 are one clip twice (as in a padded
# batch), and clip 8's scan has no other clip.
SCANS_N = torch.tensor([11, 11, 12, 13, 12, 11, 12, 13, 14, 11])
T0_N = torch.tensor([0.0, 2.0, 0.0, 6.0, 4.0, 4.0, 8.5, 6.0, 0.0, 14.0], dtype=torch.float64)
WINDOW_S = 4.0


def naive_excluded(scans, t0, mode: str, window_s: float = WINDOW_S) -> list[list[bool]]:
    """excluded[k][j], looped from the definition: same scan (and, for window, starts at most
    window_s apart), never k's own column."""
    n = len(scans)
    return [
        [
            j != k
            and mode != "keep"
            and int(scans[j]) == int(scans[k])
            and (mode == "mask" or abs(float(t0[j]) - float(t0[k])) <= window_s)
            for j in range(n)
        ]
        for k in range(n)
    ]
