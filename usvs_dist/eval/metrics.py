"""Downstream metrics: macro precision/recall/F1 and confusion matrix (standard-plane detection),
the saliency metrics of Bylinskii et al. (IEEE TPAMI 2019), and cross-modal recall@k.

Saliency metrics follow the MIT saliency benchmark's MATLAB code (`code_forMetrics/KLdiv.m`,
`similarity.m`, `CC.m`, `NSS.m`), computed in float64, with P the predicted (saliency) map, Q the
ground-truth map, F the binary fixation map and eps = 2.220446e-16 (MATLAB's eps):
- KLD = sum_x Q(x) log(eps + Q(x) / (P(x) + eps)), P and Q divided by their sums (no min-max).
- SIM = sum_x min(P(x), Q(x)), each map first min-max scaled to [0, 1], then divided by its sum.
- CC = Pearson correlation of P and Q (corr2 of the z-scored maps).
- NSS = mean over pixels with F > 0 of (P - mean P) / std P, std the sample std (N - 1).
Where MATLAB divides by zero this module does not return NaN: an all-zero map stays zero (as the
MATLAB code leaves it); a constant non-zero map counts as uniform in SIM and has z-scores 0 in CC
and NSS (so CC = NSS = 0); a map with no fixation is left out of NSS's average.
Maps are [H, W] or batches [B, H, W]; a batch's score is the mean over its maps.
"""

from __future__ import annotations

import torch

EPS = torch.finfo(torch.float64).eps
"""MATLAB's eps, 2.220446049250313e-16, as in KLdiv.m."""


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


def _flat(m: torch.Tensor) -> torch.Tensor:
    return m.flatten(-2).double()


def _sum_to_one(flat: torch.Tensor) -> torch.Tensor:
    # KLdiv.m / similarity.m: `if any(map(:)) map = map / sum(map(:))`: a zero map stays zero.
    total = flat.sum(dim=-1, keepdim=True)
    return torch.where(total != 0, flat / torch.where(total != 0, total, 1.0), flat)


def _min_max(flat: torch.Tensor) -> torch.Tensor:
    # similarity.m: (map - min) / (max - min); a constant map (0 / 0 in MATLAB) becomes all ones,
    # i.e. uniform once divided by its sum, and an all-zero map stays zero.
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    constant = torch.where(flat.any(dim=-1, keepdim=True), torch.ones_like(flat), flat)
    return torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), constant)


def _z_score(flat: torch.Tensor) -> torch.Tensor:
    # MATLAB's std is the sample std (N - 1), torch.std's default correction=1; a constant map's
    # z-scores are 0 here (NaN in MATLAB).
    std = flat.std(dim=-1, keepdim=True)
    return torch.where(
        std > 0, (flat - flat.mean(dim=-1, keepdim=True)) / torch.where(std > 0, std, 1.0), 0.0
    )


def kld(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """KLD (KLdiv.m): sum_x Q log(eps + Q / (P + eps)), P and Q divided by their sums (lower is better)."""
    p, q = _sum_to_one(_flat(pred)), _sum_to_one(_flat(truth))
    return (q * torch.log(EPS + q / (p + EPS))).sum(dim=-1).mean().item()


def sim(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """SIM (similarity.m): sum_x min(P, Q), each min-max scaled to [0, 1] then divided by its sum."""
    p, q = _sum_to_one(_min_max(_flat(pred))), _sum_to_one(_min_max(_flat(truth)))
    return torch.minimum(p, q).sum(dim=-1).mean().item()


def cc(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """CC (CC.m): Pearson correlation of P and the continuous ground-truth map Q."""
    p, q = _z_score(_flat(pred)), _z_score(_flat(truth))
    n = p.shape[-1]
    return ((p * q).sum(dim=-1) / (n - 1)).mean().item()


def nss(pred: torch.Tensor, fixations: torch.Tensor) -> float:
    """NSS (NSS.m): mean over fixation pixels (F > 0) of (P - mean P) / std P, std with N - 1."""
    z = _z_score(_flat(pred))
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
