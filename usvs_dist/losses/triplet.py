"""Hardest-negative triplet ranking loss of VSE++ (Faghri et al., BMVC 2018), dual2024's MMSL term
(Gridach et al., ISBI 2024; docs/methods.md).

L_t(v, a) = mean_k [ max_{j!=k} (alpha - s(v_k, a_k) + s(v_k, a_j))_+
                   + max_{j!=k} (alpha - s(v_k, a_k) + s(v_j, a_k))_+ ],  s = cosine.
The hardest negatives are mined over the gathered global batch (N = W*B columns), not the
local one; each rank holds B x N similarities. Samples excluded as negatives (same-scan clips,
`negatives.same_scan_exclusions`) are never mined; a row left without negatives adds 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usvs_dist.dist import collectives


def _hardest_hinge(
    x_BD: torch.Tensor, y_ND: torch.Tensor, margin: float, exclude_BN: torch.Tensor | None
) -> torch.Tensor:
    """Per local row k: max over gathered j != k, not excluded, of (margin - s(x_k, y_k) + s(x_k, y_j))_+."""
    rows_B = collectives.global_rows(x_BD.shape[0], x_BD.device)
    sim_BN = x_BD @ y_ND.T
    positive_B = sim_BN.gather(1, rows_B[:, None]).squeeze(1)
    negatives_BN = sim_BN.clone()
    negatives_BN[torch.arange(len(rows_B), device=x_BD.device), rows_B] = float("-inf")
    if exclude_BN is not None:
        negatives_BN = negatives_BN.masked_fill(exclude_BN, float("-inf"))
    # A row without negatives: margin - s + (-inf) clamps to 0, with a zero gradient.
    return (margin - positive_B + negatives_BN.max(dim=1).values).clamp(min=0)


def hardest_triplet(
    anchor_BD: torch.Tensor,
    candidate_BD: torch.Tensor,
    margin: float,
    exclude_BN: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSE++ max-of-hinges loss of anchors against candidates, both directions, mean over rows.

    Args:
        anchor_BD: this rank's anchors (e.g. video), unnormalised; row k pairs with candidate row k.
        candidate_BD: this rank's candidates (e.g. audio).
        margin: alpha.
        exclude_BN: optional bool mask of gathered samples that are not negatives of each local
            row (`negatives.same_scan_exclusions`); a symmetric relation, used in both directions.

    Returns:
        Scalar mean over this rank's rows; its mean over ranks is the global-batch loss.
    """
    if anchor_BD.shape != candidate_BD.shape:
        raise ValueError(f"anchor {tuple(anchor_BD.shape)} and candidate {tuple(candidate_BD.shape)} differ")
    if anchor_BD.shape[0] * collectives.world_size() < 2:
        raise ValueError("the triplet loss needs at least 2 samples in the global batch")
    x_BD = F.normalize(anchor_BD, dim=-1)
    y_BD = F.normalize(candidate_BD, dim=-1)
    # Direction 1: anchor x_k against candidates y_j; direction 2: candidate y_k against anchors x_j.
    # The positive s(x_k, y_k) is the same number in both, computed from local rows.
    x_ND, y_ND = collectives.gather_pair_with_grad(x_BD, y_BD)
    x_to_y_B = _hardest_hinge(x_BD, y_ND, margin, exclude_BN)
    y_to_x_B = _hardest_hinge(y_BD, x_ND, margin, exclude_BN)
    return (x_to_y_B + y_to_x_B).mean()
