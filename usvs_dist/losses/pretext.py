"""isbi2020's pretext objectives (Jiao et al., ISBI 2020; docs/methods.md): classify a sub-clip
order or a rotation.

The heads produce logits; these are per-sample cross-entropies, so the global-batch loss is the
mean of the ranks' losses with no gathering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pretext_classification(
    logits_BP: torch.Tensor, target_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, accuracy) of predicting which of P transformations was applied."""
    if logits_BP.shape[0] != target_B.shape[0]:
        raise ValueError(f"logits {tuple(logits_BP.shape)} and targets {tuple(target_B.shape)} differ in B")
    if int(target_B.max()) >= logits_BP.shape[1] or int(target_B.min()) < 0:
        raise ValueError(f"targets must lie in [0, {logits_BP.shape[1]}) for {logits_BP.shape[1]} classes")
    accuracy = (logits_BP.detach().argmax(dim=1) == target_B).float().mean()
    return F.cross_entropy(logits_BP, target_B), accuracy
