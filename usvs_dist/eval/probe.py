"""Standard-plane detection (docs/methods.md): a linear probe on frozen features and full fine-tuning,
k-fold cross-validation by scan, macro precision/recall/F1 (mean and std over folds).

Each function runs on `device` (default: where the encoder is; see eval/device.py): encoder
forward passes under bf16 autocast on CUDA, the linear probe's L-BFGS in float32 everywhere.
Inputs stay on the CPU and move batch by batch; features and predictions come back on the CPU.
"""

from __future__ import annotations

import copy
import random
import statistics
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from usvs_dist.config.schema import EvalConfig
from usvs_dist.eval.device import autocast, module_device
from usvs_dist.eval.metrics import confusion_matrix, macro_prf
from usvs_dist.eval.progress import progress


def scan_folds(scans: list[str], k: int, seed: int) -> list[list[int]]:
    """Rows of each of the k test folds: scans shuffled by seed and dealt round-robin (no scan in
    two folds); a ValueError when there are fewer than k scans (or fewer than 2)."""
    distinct = sorted(set(scans))
    if len(distinct) < 2:
        raise ValueError(f"cross-validation by scan needs at least 2 scans, found {len(distinct)}")
    if len(distinct) < k:
        # Shrinking k here would report, say, 2-fold figures as eval.folds-fold ones.
        raise ValueError(
            f"cross-validation by scan: the evaluated clips come from {len(distinct)} scans, fewer "
            f"than eval.folds={k}; lower eval.folds, or evaluate more scans (raise eval.max_clips, "
            "add splits to eval.plane_splits, or pass --shards with more labelled scans)"
        )
    random.Random(seed).shuffle(distinct)
    fold_of = {scan: n % k for n, scan in enumerate(distinct)}
    return [[i for i, s in enumerate(scans) if fold_of[s] == f] for f in range(k)]


def fold_rows(folds: list[list[int]], n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(train rows, test rows) of each fold of `scan_folds` over n rows: the fold, and the rest."""
    for test_rows in folds:
        held_out = set(test_rows)
        yield torch.tensor([i for i in range(n) if i not in held_out]), torch.tensor(test_rows)


@torch.no_grad()
def features(encoder: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, F] frozen features (inference mode) computed where the encoder is (bf16 autocast on
    CUDA), returned on the CPU as float32."""
    encoder.eval()
    param = next(encoder.parameters())
    with autocast(param.device):
        return torch.cat(
            [
                encoder(inputs[i : i + batch_size].to(param.device, param.dtype)).float().cpu()
                for i in range(0, len(inputs), batch_size)
            ]
        )


def linear_probe(
    train_X: torch.Tensor,
    train_y: torch.Tensor,
    test_X: torch.Tensor,
    l2: float,
    iters: int,
    classes: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Predicted classes of test_X (on the CPU) by multinomial logistic regression on standardised
    features, full-batch L-BFGS in float32 on `device`."""
    train_X, test_X = train_X.to(device, torch.float32), test_X.to(device, torch.float32)
    train_y = train_y.to(device)
    mean, std = train_X.mean(dim=0), train_X.std(dim=0) + 1e-6
    Xtr, Xte = (train_X - mean) / std, (test_X - mean) / std
    W = torch.zeros(Xtr.shape[1], classes, device=device, requires_grad=True)
    b = torch.zeros(classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(Xtr @ W + b, train_y) + l2 * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (Xte @ W + b).argmax(dim=1).cpu()


def finetune(
    encoder: nn.Module,
    train_inputs: torch.Tensor,
    train_y: torch.Tensor,
    test_inputs: torch.Tensor,
    cfg: EvalConfig,
    classes: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predicted classes (on the CPU) after fine-tuning a copy of the encoder with a linear head
    (Adam) on `device` (default: the encoder's), forward passes under bf16 autocast on CUDA."""
    device = module_device(encoder) if device is None else torch.device(device)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(encoder).to(device).train()
    head = nn.Linear(model.out_features, classes).to(device)  # initialised on the CPU: same on any device
    opt = torch.optim.Adam(
        [
            {"params": model.parameters(), "lr": cfg.finetune_lr},
            {"params": head.parameters(), "lr": cfg.finetune_head_lr},
        ]
    )
    n = len(train_inputs)
    size = max(2, min(cfg.batch_size, n))  # BatchNorm needs 2 samples
    order = torch.randperm(n)  # drawn on the CPU: the same batches on any device
    for step in range(cfg.finetune_steps):
        start = (step * size) % n
        if start + size > n:  # a new pass over the fold, reshuffled
            order = torch.randperm(n)
            start = 0
        rows = order[start : start + size]
        x, y = train_inputs[rows].to(device), train_y[rows].to(device)
        with autocast(device):
            loss = F.cross_entropy(head(model(x)).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        head.eval()
        return head(features(model, test_inputs, cfg.batch_size).to(device)).argmax(dim=1).cpu()


def plane_detection(
    encoder: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    scans: list[str],
    cfg: EvalConfig,
    protocols=("linear", "finetune"),
    *,
    classes: int,
    device: torch.device | str | None = None,
    desc: str = "planes",
) -> dict:
    """Per protocol: macro P/R/F1 mean and std over scan folds, and the summed confusion matrix.

    `classes` is the size of the shards' label vocabulary. Clips without a label are left out.
    `device`: where the probe and fine-tuning run (default: the encoder's; frozen features are
    computed where the encoder is). `desc` heads the progress lines (eval/progress.py: one per
    protocol and fold).
    Returns {"linear": {"f1": .., "f1_std": .., ..., "confusion": [K, K]}, ...} and "clips", "folds".
    """
    device = module_device(encoder) if device is None else torch.device(device)
    keep = (labels >= 0).nonzero().flatten()
    if len(keep) == 0:
        raise ValueError("no clip has a plane label: the shards were built without labels files")
    inputs, labels = inputs[keep], labels[keep]
    scans = [scans[i] for i in keep.tolist()]
    folds = scan_folds(scans, cfg.folds, cfg.seed)
    feats = features(encoder, inputs, cfg.batch_size) if "linear" in protocols else None
    out: dict = {"clips": len(keep), "folds": len(folds)}
    for protocol in protocols:
        if protocol == "finetune" and cfg.finetune_steps == 0:
            continue
        per_fold: list[dict[str, float]] = []
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        with progress(len(folds), f"{desc} {protocol}") as advance:
            for train, test in fold_rows(folds, len(scans)):
                if protocol == "linear":
                    pred = linear_probe(
                        feats[train],
                        labels[train],
                        feats[test],
                        cfg.probe_l2,
                        cfg.probe_iters,
                        classes,
                        device,
                    )
                else:
                    pred = finetune(encoder, inputs[train], labels[train], inputs[test], cfg, classes, device)
                fold_confusion = confusion_matrix(pred, labels[test], classes)
                confusion += fold_confusion
                per_fold.append(macro_prf(fold_confusion))
                advance()
        summary = {}
        for metric in ("precision", "recall", "f1"):
            values = [f[metric] for f in per_fold]
            summary[metric] = statistics.mean(values)
            summary[f"{metric}_std"] = statistics.pstdev(values)
        summary["confusion"] = confusion
        out[protocol] = summary
    return out
