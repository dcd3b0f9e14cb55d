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


def gather_strings(text: str) -> list[str]:
    """Every rank's `text`, in rank order (a collective: every rank calls it); [text] without a group."""
    if not is_distributed():
        return [text]
    out: list[str] = [""] * world_size()
    dist.all_gather_object(out, text)
    return out


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


class _GlobalBatchNormFn(torch.autograd.Function):
    """BatchNorm over the rows of every rank, [B, C] per rank, with the backward across ranks.

    Forward: each rank's count, mean and M2 (sum of squared deviations) per channel are
    all-gathered and combined (Chan et al.'s pairwise update, stable where sum and sum of squares
    cancel), giving the global mean and biased variance over N = sum of the ranks' rows. Backward
    (torch's SyncBatchNorm math): with x^ = (x - mean) / sqrt(var + eps) and dy this rank's
    upstream gradient,

        dx = w / sqrt(var + eps) * (dy - sum(dy) / N - x^ * sum(dy * x^) / N)

    where both sums run over every rank's rows (one all-reduce of 2C numbers). dw = sum(dy * x^) and
    db = sum(dy) stay local, like any parameter gradient: DeepSpeed averages them over ranks. dy is
    the gradient of every rank's loss (the gathered losses' backward sums them into this rank's
    rows), so a W-rank run's averaged update equals one process's on the global batch.
    """

    @staticmethod
    def forward(ctx, x_BC, weight_C, bias_C, eps: float):
        x = x_BC.float()
        C = x.shape[1]
        n = torch.full((1,), float(x.shape[0]), dtype=torch.float32, device=x.device)
        mean_C = x.mean(0)
        m2_C = (x - mean_C).square().sum(0)
        parts = [
            torch.empty(1 + 2 * C, dtype=torch.float32, device=x.device) for _ in range(dist.get_world_size())
        ]
        dist.all_gather(parts, torch.cat([n, mean_C, m2_C]))
        n_W, mean_WC, m2_WC = torch.stack(parts).split([1, C, C], dim=1)
        total = n_W.sum()
        mean_C = (n_W * mean_WC).sum(0) / total
        m2_C = (m2_WC + n_W * (mean_WC - mean_C).square()).sum(0)
        invstd_C = torch.rsqrt(m2_C / total + eps)
        xhat_BC = (x - mean_C) * invstd_C
        if weight_C is None:
            y, scale_C = xhat_BC, invstd_C
        else:
            y, scale_C = xhat_BC * weight_C.float() + bias_C.float(), invstd_C * weight_C.float()
        # The backward keeps no reference to the parameters (ZeRO-3 frees them after forward).
        ctx.save_for_backward(xhat_BC, scale_C, total)
        ctx.param_dtype = None if weight_C is None else weight_C.dtype
        ctx.mark_non_differentiable(mean_C, m2_C, total)
        return y.to(x_BC.dtype), mean_C, m2_C, total

    @staticmethod
    def backward(ctx, dy_BC, *_stats):
        xhat_BC, scale_C, total = ctx.saved_tensors
        dy = dy_BC.float()
        db_C = dy.sum(0)
        dw_C = (dy * xhat_BC).sum(0)
        sums = torch.cat([db_C, dw_C])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sum_dy_C, sum_dy_xhat_C = sums.chunk(2)
        dx = scale_C * (dy - sum_dy_C / total - xhat_BC * sum_dy_xhat_C / total)
        dw = db = None
        if ctx.param_dtype is not None:
            dw, db = dw_C.to(ctx.param_dtype), db_C.to(ctx.param_dtype)
        return dx.to(dy_BC.dtype), dw, db, None


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, every rank's rows.

    In training mode with a process group of more than one rank, mean and variance are taken over
    all ranks' rows and the gradient flows back across ranks (`_GlobalBatchNormFn`), on gloo and
    NCCL alike (torch.nn.SyncBatchNorm runs on CUDA only). The running statistics are updated
    with the global mean and the unbiased global variance, so every rank keeps the same ones.
    Without a group, at world size 1 and in eval mode it is nn.BatchNorm1d exactly, and its state
    dict is nn.BatchNorm1d's (same keys), so checkpoints and encoders.pt do not change.

    Every rank must run the layer in training mode the same number of times (it is a collective).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """[B, C] or [B, C, L] -> same shape; 3-d input is normalised over B and L as in BatchNorm1d."""
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        C = input.shape[1]
        x_BC = input if input.dim() == 2 else input.transpose(1, 2).reshape(-1, C)
        y_BC, mean_C, m2_C, total = _GlobalBatchNormFn.apply(
            x_BC, self.weight if self.affine else None, self.bias if self.affine else None, self.eps
        )
        if self.track_running_stats:
            self._update_running_stats(mean_C, m2_C / (total - 1))
        return y_BC if input.dim() == 2 else y_BC.view(input.shape[0], -1, C).transpose(1, 2)

    @torch.no_grad()
    def _update_running_stats(self, mean_C: torch.Tensor, var_C: torch.Tensor) -> None:
        """nn.BatchNorm1d's update (momentum, or the cumulative average when it is None)."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean_C.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(var_C.to(self.running_var.dtype), factor)


def global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with each plain nn.BatchNorm1d in it replaced by a GlobalBatchNorm1d that shares
    its parameters and buffers (in place; a BatchNorm1d `module` itself comes back replaced)."""
    if type(module) is torch.nn.BatchNorm1d:
        out = GlobalBatchNorm1d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child))
    return module
