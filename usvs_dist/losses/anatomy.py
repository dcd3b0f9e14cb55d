"""awcl2022's anatomy-aware contrastive loss (AWCL, Fu et al., ECCV 2022 Workshops), over gathered
negatives; the loss form is reconstructed from the paper's abstract (docs/methods.md, "awcl2022").

Two augmented views of each frame. Anchor k (view 1) scores every gathered view-2 sample j by
cosine / tau. Its target distribution puts 1 - r on its own other view and r, spread evenly, on
the other samples with the same anatomy label (r = anatomy ratio), or everything on its own view
when it has none (or no label): L = -mean_k sum_j t_kj log softmax_j(s_kj / tau). This is
(1 - r) instance InfoNCE + r supervised-contrastive loss (Khosla et al., 2020) over the other
same-anatomy positives; symmetrised over the two views. Samples excluded as negatives (same-scan
clips, `negatives.same_scan_exclusions`) leave the softmax denominators unless they are positives
(own view or same anatomy, t_kj > 0): the option removes negatives, never positives.
Shapes: B local, N = W*B gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usvs_dist.dist import collectives


def anatomy_targets(labels_B: torch.Tensor, labels_N: torch.Tensor, ratio: float) -> torch.Tensor:
    """t_BN: soft targets over the gathered samples; labels < 0 have no anatomy (instance only)."""
    rows_B = collectives.global_rows(labels_B.shape[0], labels_B.device)
    own_BN = F.one_hot(rows_B, labels_N.shape[0]).bool()
    same_BN = (labels_B[:, None] == labels_N[None, :]) & (labels_B[:, None] >= 0) & ~own_BN
    count_B1 = same_BN.sum(dim=1, keepdim=True)
    has_B1 = count_B1 > 0
    anatomy_BN = same_BN.float() * (ratio / count_B1.clamp(min=1))
    own_weight_B1 = torch.where(has_B1, 1.0 - ratio, 1.0)
    return own_BN.float() * own_weight_B1 + anatomy_BN


def anatomy_info_nce(
    view1_BD: torch.Tensor,
    view2_BD: torch.Tensor,
    labels_B: torch.Tensor,
    temperature: float,
    ratio: float,
    exclude_BN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AWCL loss of two views with anatomy labels (-1: none); returns (loss, {anatomy_positive_share}).

    `exclude_BN` (optional, [B, N] bool, symmetric): gathered samples that are not negatives of
    each local row; those that are not positives either leave its denominators, in both directions.
    """
    if view1_BD.shape != view2_BD.shape or view1_BD.shape[0] != labels_B.shape[0]:
        raise ValueError(
            f"views {tuple(view1_BD.shape)}, {tuple(view2_BD.shape)} and labels {tuple(labels_B.shape)} "
            "must agree in B"
        )
    labels_N = collectives.gather_nograd(labels_B)
    targets_BN = anatomy_targets(labels_B, labels_N, ratio)
    dropped_BN = None if exclude_BN is None else exclude_BN & (targets_BN == 0)
    z1_BD = F.normalize(view1_BD, dim=-1)
    z2_BD = F.normalize(view2_BD, dim=-1)

    def one_way(x_BD: torch.Tensor, y_ND: torch.Tensor) -> torch.Tensor:
        logits_BN = x_BD @ y_ND.T / temperature
        if dropped_BN is None:
            return -(targets_BN * F.log_softmax(logits_BN, dim=1)).sum(dim=1).mean()
        # Dropped columns: -inf in the softmax, and 0 (not 0 * -inf) in the target sum.
        log_p_BN = F.log_softmax(logits_BN.masked_fill(dropped_BN, float("-inf")), dim=1)
        return -(targets_BN * log_p_BN.masked_fill(dropped_BN, 0.0)).sum(dim=1).mean()

    z1_ND, z2_ND = collectives.gather_pair_with_grad(z1_BD, z2_BD)
    loss = 0.5 * (one_way(z1_BD, z2_ND) + one_way(z2_BD, z1_ND))
    # Share of anchors that found an anatomy positive in the global batch: if it is near 0 the
    # recipe is plain instance contrast (batch too small for the label vocabulary).
    matches_B = ((labels_B[:, None] == labels_N[None, :]) & (labels_B[:, None] >= 0)).sum(dim=1)
    with_positive = (matches_B > 1).float().mean()  # its own column always matches once
    return loss, {"anatomy_positive_share": with_positive}
