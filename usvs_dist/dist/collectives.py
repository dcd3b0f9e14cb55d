"""Collectives that degrade to the single-process answer when no process group is up."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as _fc
import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.functional)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now (for rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_distributed() -> bool:
    """True when a process group is initialised and holds more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the default group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(x_BD: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order, [W*B, D], with gradients flowing back.

    The backward sums every rank's gradient for this rank's rows, so with the usual gradient
    averaging over ranks the result equals one process holding the global batch; no extra
    world-size factor is needed (docs/methods.md, "Gathered negatives").
    """
    if not is_distributed():
        return x_BD
    x_BD = x_BD.contiguous()  # non-contiguous inputs gather wrong rows (pytorch #120386)
    # The autograd collectives moved twice in 2025-26: prefer the functional one, keep the old.
    if hasattr(_fc, "all_gather_single_autograd"):
        return _fc.all_gather_single_autograd(x_BD, 0, dist.group.WORLD)
    return torch.cat(torch.distributed.nn.functional.all_gather(x_BD), dim=0)


def gather_pair_with_grad(x_BD: torch.Tensor, y_BE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors gathered in one collective (half the latency of two): ([W*B, D], [W*B, E])."""
    xy_ND = gather_with_grad(torch.cat([x_BD, y_BE], dim=1))
    return xy_ND[:, : x_BD.shape[1]], xy_ND[:, x_BD.shape[1] :]


def gather_nograd(x_B: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order, without gradient (labels, detached affinities)."""
    if not is_distributed():
        return x_B.detach()
    parts = [torch.empty_like(x_B) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x_B.detach().contiguous())
    return torch.cat(parts, dim=0)


def global_rows(B: int, device: torch.device | str) -> torch.Tensor:
    """Indices of this rank's B rows in the gathered [W*B] batch (the positives' columns)."""
    return torch.arange(B, device=device) + rank() * B


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks, without gradient (for logging)."""
    if not is_distributed():
        return x.detach()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()
