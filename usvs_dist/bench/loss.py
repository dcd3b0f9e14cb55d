"""`bench loss`: the gathered (B_local x N) losses against the naive global (N x N) ones.

W gloo processes (NCCL with one GPU each when `--device cuda` and W GPUs exist) each hold
B_local embedding pairs. Gathered: the rank's B rows against all N = W*B gathered columns
(usvs_dist.losses). Naive: every rank gathers both modalities and computes the loss of the whole
global batch, N x N, as a port of a single-GPU loss does. Peak memory is that of forward plus
backward of the loss alone (inputs excluded): torch.cuda's peak on GPU, torch's MemTracker on CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from usvs_dist.config import SelfPacedConfig
from usvs_dist.dist import collectives
from usvs_dist.losses import hardest_triplet, info_nce, self_paced_info_nce

TAU = 0.1


def _naive_info_nce(x_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    x_ND, y_ND = (F.normalize(t, dim=-1) for t in collectives.gather_pair_with_grad(x_BD, y_BD))
    targets = torch.arange(x_ND.shape[0], device=x_ND.device)
    logits_NN = x_ND @ y_ND.T / TAU
    # Every rank computes the same global loss; scaled so the averaged gradient matches.
    return 0.5 * (F.cross_entropy(logits_NN, targets) + F.cross_entropy(logits_NN.T, targets))


def _naive_triplet(x_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    x_ND, y_ND = (F.normalize(t, dim=-1) for t in collectives.gather_pair_with_grad(x_BD, y_BD))
    sim_NN = x_ND @ y_ND.T
    positive_N = sim_NN.diagonal()
    masked = sim_NN - 10.0 * torch.eye(len(sim_NN), device=sim_NN.device)
    rows = (0.2 - positive_N + masked.max(dim=1).values).clamp(min=0)
    cols = (0.2 - positive_N + masked.max(dim=0).values).clamp(min=0)
    return (rows + cols).mean()


CASES: dict[str, tuple[Callable, Callable]] = {
    "info_nce": (lambda x, y: info_nce(x, y, TAU), _naive_info_nce),
    "triplet": (lambda x, y: hardest_triplet(x, y, 0.2), _naive_triplet),
    "self_paced": (lambda x, y: self_paced_info_nce(x, y, TAU, 0.0, SelfPacedConfig())[0], None),
}


def _peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return int(tracker.get_tracker_snapshot("peak")[device]["Total"])


def _worker(rank: int, world: int, port: int, batch: int, dim: int, device: str, repeats: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    on_gpu = device == "cuda"
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=world)
    dev = torch.device(f"cuda:{rank}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(dev)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    try:
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(batch, dim, generator=g).to(dev).requires_grad_(True)
        y = torch.randn(batch, dim, generator=g).to(dev).requires_grad_(True)
        results = {}
        for name, (gathered, naive) in CASES.items():
            for variant, loss_fn in (("gathered", gathered), ("naive", naive)):
                if loss_fn is None:
                    continue

                def once(loss_fn: Callable = loss_fn) -> None:
                    x.grad = y.grad = None
                    loss_fn(x, y).backward()

                once()  # warm-up: allocator, gloo buffers, kernels
                peak = _peak_bytes(once, dev)
                times = []
                for _ in range(repeats):
                    dist.barrier()
                    start = time.perf_counter()
                    once()
                    if on_gpu:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                results[(name, variant)] = (peak, statistics.median(times))
        out[rank] = results
    finally:
        dist.destroy_process_group()


def measure(world: int, batch: int, dim: int, device: str, repeats: int) -> dict:
    """{(loss, variant): (peak bytes, median seconds)} of rank 0."""
    if device == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"--device cuda needs {world} GPUs, found {torch.cuda.device_count()}")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _worker,
            args=(world, collectives.free_port(), batch, dim, device, repeats, out),
            nprocs=world,
            start_method="spawn",
        )
        return dict(out[0])


def run(world: int, batch: int, dim: int, device: str, repeats: int, print_fn=print) -> tuple[float, float]:
    """Print the table; return (memory ratio, time ratio) of InfoNCE, gathered / naive."""
    results = measure(world, batch, dim, device, repeats)
    n = world * batch
    print_fn(
        f"W={world} ranks x B_local={batch} (N={n}), D={dim}, {device}; logits per rank: gathered "
        f"{batch}x{n}, naive {n}x{n}; peak = forward + backward of the loss; {repeats} timed repeats"
    )
    print_fn(f"{'loss':<12}{'variant':<10}{'peak MiB':>10}{'median ms':>11}")
    for (name, variant), (peak, seconds) in results.items():
        print_fn(f"{name:<12}{variant:<10}{peak / 2**20:>10.2f}{1000 * seconds:>11.2f}")
    (mem_g, t_g), (mem_n, t_n) = results[("info_nce", "gathered")], results[("info_nce", "naive")]
    memory_ratio, time_ratio = mem_g / mem_n, t_g / t_n
    print_fn(f"memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")
    return memory_ratio, time_ratio
