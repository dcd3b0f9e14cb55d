"""usvs2020's affinity-aware self-paced negatives (Jiao et al., MICCAI 2020), as reconstructed
from the paper's abstract in docs/methods.md ("usvs2020"); the defaults are the project's.

Affinity A_kj: cosine similarity of samples k and j's detached embeddings (by default the mean
of the video-video and audio-audio cosines). At training progress p, anchor k admits only the
negatives whose affinity lies at or below the lambda(p)-quantile of its own negatives' affinities
(easy ones first), and never one above kappa (a likely positive: another clip of the same
anatomy). lambda grows from lambda0 to 1 over the ramp. Samples excluded as negatives (same-scan
clips, `negatives.same_scan_exclusions`) are not the anchor's negatives at all: they are left out
of its quantile as well as its softmax, so lambda keeps meaning a share of its real negatives.
Shapes: B local rows, N = W*B gathered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from usvs_dist.config.schema import SelfPacedConfig
from usvs_dist.dist import collectives
from usvs_dist.losses.infonce import info_nce


def admitted_share(progress: float, cfg: SelfPacedConfig) -> float:
    """lambda(p): the quantile of each anchor's negatives admitted at training progress p in [0, 1]."""
    ramp = min(1.0, max(0.0, progress) / cfg.ramp_fraction)
    if cfg.schedule == "linear":
        rise = ramp
    elif cfg.schedule == "cosine":
        rise = 0.5 * (1.0 - math.cos(math.pi * ramp))
    elif cfg.schedule == "step":
        rise = math.floor(ramp * cfg.stages) / cfg.stages
    else:
        raise ValueError(f"objective.self_paced.schedule={cfg.schedule!r} is not linear, cosine or step")
    return cfg.lambda0 + (1.0 - cfg.lambda0) * rise


def affinity(video_BD: torch.Tensor, audio_BD: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """A_BN: detached cosine affinities of this rank's rows to every gathered sample."""

    if mode not in ("mean", "video", "audio"):
        raise ValueError(f"objective.self_paced.affinity={mode!r} is not mean, video or audio")
    v_BD = F.normalize(video_BD.detach(), dim=-1)
    a_BD = F.normalize(audio_BD.detach(), dim=-1)
    # One collective for both modalities.
    v_ND, a_ND = collectives.gather_nograd(torch.cat([v_BD, a_BD], dim=1)).split(
        [v_BD.shape[1], a_BD.shape[1]], dim=1
    )
    if mode == "video":
        return v_BD @ v_ND.T
    if mode == "audio":
        return a_BD @ a_ND.T
    return 0.5 * (v_BD @ v_ND.T + a_BD @ a_ND.T)


def admit_negatives(
    affinity_BN: torch.Tensor, share: float, kappa: float, exclude_BN: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool mask of admitted negatives: affinity <= the anchor's `share`-quantile and <= kappa.

    The positive's own column is False (it is not a negative), and so are the `exclude_BN`
    columns, which do not count towards the quantile (an anchor without any negative admits none).
    """
    rows_B = collectives.global_rows(affinity_BN.shape[0], affinity_BN.device)
    negatives_BN = affinity_BN.float().clone()
    negatives_BN[torch.arange(len(rows_B), device=affinity_BN.device), rows_B] = float("nan")
    if exclude_BN is not None:
        negatives_BN = negatives_BN.masked_fill(exclude_BN, float("nan"))
    threshold_B1 = torch.nanquantile(negatives_BN, share, dim=1, keepdim=True)
    # NaN compares False, so the positive's column stays out.
    return (negatives_BN <= threshold_B1) & (negatives_BN <= kappa)


def self_paced_info_nce(
    video_BD: torch.Tensor,
    audio_BD: torch.Tensor,
    temperature: float,
    progress: float,
    cfg: SelfPacedConfig,
    symmetric: bool = True,
    exclude_BN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Video<->audio InfoNCE over the admitted negatives; returns (loss, {admitted fraction, lambda}).

    `exclude_BN` (optional, [B, N] bool): gathered samples that are not negatives of each local
    row (same-scan clips); the admitted fraction is then a share of the negatives left.
    """
    n_global = video_BD.shape[0] * collectives.world_size()
    if n_global < 2:
        raise ValueError("the self-paced loss needs at least 2 samples in the global batch")
    share = admitted_share(progress, cfg)
    admit_BN = admit_negatives(affinity(video_BD, audio_BD, cfg.affinity), share, cfg.kappa, exclude_BN)
    loss = info_nce(video_BD, audio_BD, temperature, symmetric=symmetric, admit_BN=admit_BN)
    candidates = torch.tensor(float(admit_BN.shape[0] * (n_global - 1)), device=admit_BN.device)
    if exclude_BN is not None:
        candidates = candidates - exclude_BN.sum()  # the positive's column is never excluded
    fraction = admit_BN.float().sum() / candidates.clamp(min=1)
    return loss, {
        "selfpaced_admitted": fraction.detach(),
        "selfpaced_lambda": torch.tensor(share, device=video_BD.device),
    }
