"""Global BatchNorm: the heads' BatchNorm over every rank's rows, and the engine's conversion.

Two gloo ranks, each holding half the global batch, must equal one process with a plain
nn.BatchNorm1d on the whole batch: outputs, running statistics, input gradients (a rank's is W x
the global one before averaging, as in the loss checks) and parameter gradients averaged over
ranks, as DeepSpeed does (tests/loss_checks.py).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from usvs_dist.dist.collectives import free_port
from usvs_dist.config import load_config
from usvs_dist.dist.collectives import GlobalBatchNorm1d, global_batchnorm
from usvs_dist.dist.engine import distribute_batchnorm
from usvs_dist.losses import check_objective, info_nce
from usvs_dist.models import build_model
from usvs_dist.models.heads import ProjectionHead

N, F, D, C, L, TAU, WORLD = 12, 5, 4, 3, 7, 0.1, 2


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "x_NF": torch.randn(N, F, generator=g) * 3 + 1,  # off-centre: mean and variance both matter
        "y_ND": torch.randn(N, D, generator=g),
        "x_NCL": torch.randn(N, C, L, generator=g) + 2,
        "g_NCL": torch.randn(N, C, L, generator=g),
    }


def _head(cls: type[nn.BatchNorm1d]) -> ProjectionHead:
    """A projection head with seeded weights and a non-trivial affine BatchNorm of type `cls`."""
    torch.manual_seed(11)
    head = ProjectionHead(F, D)
    with torch.no_grad():
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.5, 0.5)
    return head if cls is nn.BatchNorm1d else global_batchnorm(head)


def _norm3(cls: type[nn.BatchNorm1d]) -> nn.BatchNorm1d:
    bn = cls(C, momentum=None)  # the cumulative average: the other running-stats rule
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(12))
        bn.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(13))
    return bn


def _run(head: nn.Module, bn3: nn.Module, data: dict[str, torch.Tensor], rows: slice) -> dict:
    """Two training steps' forward/backward of both layers on `rows`, then an eval forward."""
    x = data["x_NF"][rows].clone().requires_grad_(True)
    x3 = data["x_NCL"][rows].clone().requires_grad_(True)
    out: dict = {}
    for step in range(2):  # the second step reads running stats the first one updated
        z = head(x)
        # The gathered InfoNCE: this rank's dy is the gradient of every rank's loss.
        loss = info_nce(z, data["y_ND"][rows], TAU) + (bn3(x3) * data["g_NCL"][rows]).mean()
        loss.backward()
        out[f"z{step}"] = z.detach()
    head.eval(), bn3.eval()
    with torch.no_grad():
        out["z_eval"] = head(x)
        out["z3_eval"] = bn3(x3)
    out.update(x_grad=x.grad, x3_grad=x3.grad)
    out.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    out.update({f"bn3.{k}": v.detach().clone() for k, v in bn3.state_dict().items()})
    out.update({f"grad.head.{k}": p.grad for k, p in head.named_parameters()})
    out.update({f"grad.bn3.{k}": p.grad for k, p in bn3.named_parameters()})
    return out


def _worker(rank: int, world: int, port: int, data: dict, result) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = N // world
        out = _run(_head(GlobalBatchNorm1d), _norm3(GlobalBatchNorm1d), data, slice(rank * b, (rank + 1) * b))
        for k in [k for k in out if k.startswith("grad.")]:
            dist.all_reduce(out[k])
            out[k] /= world  # averaged over ranks, as DeepSpeed does
        result[rank] = out
    finally:
        dist.destroy_process_group()


def _max_diffs(world: int = WORLD) -> dict[str, float]:
    """Max abs difference, per compared quantity, between `world` gloo ranks and one process."""
    data = _data()
    with mp.Manager() as manager:
        result = manager.dict()
        mp.start_processes(
            _worker, args=(world, free_port(), data, result), nprocs=world, start_method="spawn"
        )
        ranks = dict(result)
    one = _run(_head(nn.BatchNorm1d), _norm3(nn.BatchNorm1d), data, slice(None))
    diffs: dict[str, float] = {}
    for key, expected in one.items():
        if key in ("x_grad", "x3_grad"):  # a rank's input gradient is W x the global one
            got = torch.cat([ranks[r][key] / world for r in range(world)])
        elif key.startswith("z"):  # each rank's rows, in rank order
            got = torch.cat([ranks[r][key] for r in range(world)])
        else:  # running statistics and averaged parameter gradients: the same on every rank
            for r in range(1, world):
                assert torch.equal(ranks[r][key], ranks[0][key]), (key, r)
            got = ranks[0][key]
        assert got.shape == expected.shape, key
        diffs[key] = (got.double() - expected.double()).abs().max().item()
    return diffs


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    diffs = _max_diffs()
    compared = {"head.norm.running_mean", "head.norm.running_var", "grad.head.norm.weight", "x_grad"}
    assert compared <= set(diffs)
    assert diffs["head.norm.num_batches_tracked"] == 0
    bad = {k: v for k, v in diffs.items() if v > 1e-5}
    assert not bad, bad


@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_batchnorm1d_exactly(momentum):
    g = torch.Generator().manual_seed(2)
    plain = nn.BatchNorm1d(D, momentum=momentum)
    glob = global_batchnorm(copy.deepcopy(plain))
    assert type(glob) is GlobalBatchNorm1d
    assert list(glob.state_dict()) == list(plain.state_dict())
    for shape in [(6, D), (6, D, 3)]:
        for _ in range(2):
            x = torch.randn(*shape, generator=g)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = plain(xa), glob(xb)
            assert torch.equal(ya, yb)
            ya.square().sum().backward(), yb.square().sum().backward()
            assert torch.equal(xa.grad, xb.grad)
    for (k, a), b in zip(plain.state_dict().items(), glob.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    plain.eval(), glob.eval()
    x = torch.randn(4, D, generator=g)
    assert torch.equal(plain(x), glob(x))


def _model():
    cfg = load_config(None, ["model.width=4", "model.embed_dim=8", "data.frame_size=32"])  # usvs2020
    return build_model(cfg, check_objective(cfg.objective).outputs)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(3, 1, 6, 32, 32, generator=g),
        "audio": torch.randn(3, 1, 64, 201, generator=g),
    }


@pytest.mark.parametrize("sync_bn", [False, True])
def test_the_engine_makes_batchnorm_global_keeping_parameters_and_keys(sync_bn):
    model = _model()
    before = copy.deepcopy(model)
    tensors = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert distribute_batchnorm(model, sync_bn) is model  # in place: the loop keeps its `model`
    bns = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    heads = {n for n in bns if n.startswith("projections.")}
    assert heads == {"projections.audio.norm", "projections.video.norm"}
    if sync_bn:  # every BatchNorm, the encoders' 2d/3d ones included
        assert set(bns.values()) == {nn.SyncBatchNorm}
    else:  # the heads' only; the encoders' stay per rank
        assert {bns[n] for n in heads} == {GlobalBatchNorm1d}
        assert {bns[n] for n in set(bns) - heads} == {nn.BatchNorm2d, nn.BatchNorm3d}
    # Same tensors under the same keys: checkpoints and encoders.pt read either way.
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == tensors
    # Without a process group (and for SyncBatchNorm, on CPU) the forward is the plain model's.
    out, ref = model(_inputs()), before(_inputs())
    for name in ref:
        assert torch.equal(out[name], ref[name]), name
