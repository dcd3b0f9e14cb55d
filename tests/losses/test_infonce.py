"""InfoNCE: naive reference, closed form, SGD, and 2 gloo ranks == 1 process on the global batch."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from usvs_dist.losses import info_nce

TAU = 0.1


def naive_info_nce(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = True) -> torch.Tensor:
    """L_c from METHODS.md written as loops over k and j."""

    def one_way(a, b):
        total = 0.0
        n = a.shape[0]
        for k in range(n):
            s = [F.cosine_similarity(a[k], b[j], dim=0) / tau for j in range(n)]
            denom = sum(math.exp(v.item()) for v in s)
            total += -math.log(math.exp(s[k].item()) / denom)
        return total / n

    forward = one_way(x, y)
    return torch.tensor(0.5 * (forward + one_way(y, x)) if symmetric else forward)


@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_naive_reference(symmetric):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = info_nce(x, y, TAU, symmetric=symmetric)
    assert torch.allclose(got, naive_info_nce(x, y, TAU, symmetric).to(got.dtype), atol=1e-5)


def test_symmetric_is_symmetric_in_its_arguments():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.allclose(info_nce(x, y, TAU), info_nce(y, x, TAU), atol=1e-6)
    assert not torch.allclose(info_nce(x, y, TAU, symmetric=False), info_nce(y, x, TAU, symmetric=False))


def test_closed_form_on_aligned_orthogonal_pairs():
    # s(x_k, y_k) = 1 and s(x_k, y_j) = 0: loss = -log(e^(1/tau) / (e^(1/tau) + N - 1)).
    n, tau = 8, 0.5
    x = torch.eye(n) * 3.0
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + n - 1))
    assert info_nce(x, x.clone(), tau).item() == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3), TAU)


def test_few_sgd_steps_lower_the_loss():
    g = torch.Generator().manual_seed(2)
    x_in, y_in = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    fx, fy = torch.nn.Linear(12, 8), torch.nn.Linear(12, 8)
    opt = torch.optim.SGD([*fx.parameters(), *fy.parameters()], lr=0.5)
    first = None
    for _ in range(20):
        loss = info_nce(fx(x_in), fy(y_in), TAU)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def _worker(rank: int, world: int, port: int, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = x.shape[0] // world
        xr = x[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        yr = y[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        proj = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        proj.weight.data.copy_(w)
        loss = info_nce(proj(xr), yr, TAU)
        loss.backward()
        # What DeepSpeed/DDP do: average parameter gradients over ranks.
        dist.all_reduce(proj.weight.grad)
        proj.weight.grad /= world
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        out[rank] = {
            "loss": torch.stack(losses).mean(),
            "gx": xr.grad.clone(),
            "gy": yr.grad.clone(),
            "gw": proj.weight.grad.clone(),
        }
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    world, b, d = 2, 5, 6
    g = torch.Generator().manual_seed(3)
    x, y, w = (
        torch.randn(world * b, d, generator=g),
        torch.randn(world * b, d, generator=g),
        torch.randn(d, d, generator=g),
    )
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _worker, args=(world, free_port(), x, y, w, out), nprocs=world, start_method="spawn"
        )
        out = dict(out)

    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    proj = torch.nn.Linear(d, d, bias=False)
    proj.weight.data.copy_(w)
    loss = info_nce(proj(xs), ys, TAU)
    loss.backward()

    assert out[0]["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    for r in range(world):
        rows = slice(r * b, (r + 1) * b)
        # Each rank's input gradient is W x the global one before the ranks' averaging.
        assert torch.allclose(out[r]["gx"] / world, xs.grad[rows], atol=1e-5)
        assert torch.allclose(out[r]["gy"] / world, ys.grad[rows], atol=1e-5)
        assert torch.allclose(out[r]["gw"], proj.weight.grad, atol=1e-5)
