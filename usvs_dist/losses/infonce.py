"""Cross-modal InfoNCE with negatives gathered from every rank (docs/methods.md, "InfoNCE").

L_c(x, y) = -(1/N) sum_k log( exp(s(x_k, y_k)/tau) / sum_j exp(s(x_k, y_j)/tau) ), s = cosine.
Shapes: B local batch, N = W*B global batch, D embedding. Each rank computes its B rows against
the N gathered columns (the local-loss trick): logits are B x N, never N x N. Why the gradient
equals one process's on the global batch: `collectives.gather_with_grad`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usvs_dist.dist import collectives


def _one_way(
    x_BD: torch.Tensor, y_ND: torch.Tensor, temperature: float, keep_BN: torch.Tensor | None
) -> torch.Tensor:
    rows_B = collectives.global_rows(x_BD.shape[0], x_BD.device)
    logits_BN = x_BD @ y_ND.T / temperature
    if keep_BN is not None:
        logits_BN = logits_BN.masked_fill(~keep_BN, float("-inf"))
    return F.cross_entropy(logits_BN, rows_B)


def _kept_columns(
    admit_BN: torch.Tensor | None, exclude_BN: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Columns each row's softmax runs over: admitted, not excluded, and always the positive."""
    if admit_BN is None and exclude_BN is None:
        return None
    keep_BN = admit_BN.clone() if admit_BN is not None else ~exclude_BN
    if admit_BN is not None and exclude_BN is not None:
        keep_BN &= ~exclude_BN
    rows_B = collectives.global_rows(keep_BN.shape[0], device)
    keep_BN[torch.arange(len(rows_B), device=device), rows_B] = True  # the positive is never masked out
    return keep_BN


def info_nce(
    anchor_BD: torch.Tensor,
    candidate_BD: torch.Tensor,
    temperature: float,
    symmetric: bool = True,
    admit_BN: torch.Tensor | None = None,
    exclude_BN: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of anchors x against candidates y over the global batch; symmetrised by default.

    Args:
        anchor_BD: this rank's anchors (e.g. video embeddings), unnormalised.
        candidate_BD: this rank's positives, row k pairs with anchor row k (e.g. audio).
        temperature: tau > 0.
        symmetric: return 1/2 [L_c(x, y) + L_c(y, x)] instead of L_c(x, y).
        admit_BN: optional bool mask of the negatives each local row may use (columns index the
            gathered batch); the positive is always kept. Used for both directions, so it must
            come from a symmetric relation (e.g. affinities) when `symmetric`.
        exclude_BN: optional bool mask of gathered samples that are not negatives of each local
            row (`negatives.same_scan_exclusions`); symmetric like admit_BN, the positive kept.
            An anchor left without negatives contributes log 1 = 0.

    Returns:
        The scalar loss averaged over this rank's rows; its mean over ranks is the global loss.
    """
    if anchor_BD.shape != candidate_BD.shape:
        raise ValueError(f"anchor {tuple(anchor_BD.shape)} and candidate {tuple(candidate_BD.shape)} differ")
    x_BD = F.normalize(anchor_BD, dim=-1)
    y_BD = F.normalize(candidate_BD, dim=-1)
    keep_BN = _kept_columns(admit_BN, exclude_BN, x_BD.device)
    if not symmetric:
        return _one_way(x_BD, collectives.gather_with_grad(y_BD), temperature, keep_BN)
    # Row k of the reverse direction is anchor y_k against the gathered x_j: the same pair of
    # samples (k, j) as the forward direction's, so a symmetric relation's mask serves both.
    x_ND, y_ND = collectives.gather_pair_with_grad(x_BD, y_BD)
    return 0.5 * (_one_way(x_BD, y_ND, temperature, keep_BN) + _one_way(y_BD, x_ND, temperature, keep_BN))
