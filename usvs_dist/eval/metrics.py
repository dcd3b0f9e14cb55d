"""Downstream metrics: macro precision/recall/F1 and confusion matrix (standard-plane detection),
the saliency metrics of Bylinskii et al. (IEEE TPAMI 2019), and cross-modal recall@k.

Saliency notation (docs/methods.md, "Gaze saliency"): P the predicted map, Q the ground truth,
eps = 2.2e-16; maps are [H, W] (or batches [B, H, W], averaged over B).
"""

from __future__ import annotations

import torch

EPS = 2.2e-16


def confusion_matrix(pred_N: torch.Tensor, target_N: torch.Tensor, classes: int) -> torch.Tensor:
    """[classes, classes] counts; row = true class, column = predicted class."""
    index = target_N.long() * classes + pred_N.long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def macro_prf(confusion_KK: torch.Tensor) -> dict[str, float]:
    """Macro precision, recall and F1 over the classes present in the truth (rows with support).

    A class never predicted has precision 0; classes absent from the fold are left out of the
    averages (they have no recall), as scikit-learn does with `labels` set to the present ones.
    """
    c = confusion_KK.double()
    tp = c.diag()
    support = c.sum(dim=1)
    predicted = c.sum(dim=0)
    present = support > 0
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = tp / support.clamp(min=1)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp)
    )
    return {
        "precision": precision[present].mean().item(),
        "recall": recall[present].mean().item(),
        "f1": f1[present].mean().item(),
    }


def _as_distribution(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(-2)
    return flat / (flat.sum(dim=-1, keepdim=True) + EPS)


def kld(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """KLD = sum_x Q(x) log(eps + Q(x) / (eps + P(x))), both normalised to sum 1 (lower is better)."""
    p, q = _as_distribution(pred), _as_distribution(truth)
    return (q * torch.log(EPS + q / (EPS + p))).sum(dim=-1).mean().item()


def sim(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """SIM = sum_x min(P(x), Q(x)), both normalised to sum 1 (1 is identical)."""
    return torch.minimum(_as_distribution(pred), _as_distribution(truth)).sum(dim=-1).mean().item()


def cc(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """CC: Pearson correlation of P and the continuous ground-truth map."""
    p, q = pred.flatten(-2).double(), truth.flatten(-2).double()
    p = p - p.mean(dim=-1, keepdim=True)
    q = q - q.mean(dim=-1, keepdim=True)
    denom = (p.square().sum(dim=-1) * q.square().sum(dim=-1)).sqrt()
    return ((p * q).sum(dim=-1) / (denom + EPS)).mean().item()


def nss(pred: torch.Tensor, fixations: torch.Tensor) -> float:
    """NSS: mean over fixation pixels (fixations > 0) of (P - mean(P)) / std(P)."""
    p = pred.flatten(-2).double()
    z = (p - p.mean(dim=-1, keepdim=True)) / (p.std(dim=-1, keepdim=True) + EPS)
    fix = fixations.flatten(-2) > 0
    per_map = (z * fix).sum(dim=-1) / fix.sum(dim=-1).clamp(min=1)
    return per_map[fix.any(dim=-1)].mean().item()


def recall_at_k(
    query_ND: torch.Tensor, gallery_ND: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[int, float]:
    """Share of queries whose own gallery item (same row) ranks in the top k by cosine similarity."""
    q = torch.nn.functional.normalize(query_ND.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery_ND.float(), dim=-1)
    sim_NN = q @ g.T
    own_N = sim_NN.diagonal().unsqueeze(1)
    rank_N = (sim_NN > own_N).sum(dim=1)  # 0 = best; ties count in the query's favour
    return {k: (rank_N < k).float().mean().item() for k in ks}
