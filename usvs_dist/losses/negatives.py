"""Same-scan negatives: which gathered samples an anchor does not contrast against because they
come from its own scan (docs/methods.md, "Same-scan negatives").

A batch holds several clips of one scan, and adjacent clips look and sound alike: as negatives
they are near-duplicates of the positive. `objective.same_scan_negatives` says what to do:
`keep` (every other sample is a negative, as in the papers), `mask` (no clip of the anchor's
scan is a negative) or `window` (the clips of the anchor's scan whose start time lies within
`same_scan_window_s` of the anchor's are not negatives; the scan's farther clips are). The
relation is symmetric in the two samples, so one [B, N] mask serves both directions of a
symmetric loss, and the anchor's own column (its positive) is never excluded.
Shapes: B local rows, N = W*B gathered columns.
"""

from __future__ import annotations

import torch

from usvs_dist.dist import collectives

MODES = ("keep", "mask", "window")

_TOLERANCE_S = 5e-4
"""Start times are whole milliseconds (the shards' sample keys); half of one absorbs float error."""


def same_scan_exclusions(
    scan_B: torch.Tensor, t0_B: torch.Tensor, mode: str, window_s: float
) -> torch.Tensor | None:
    """exclude_BN: True where gathered sample j is not a negative of local anchor k; None for keep.

    Args:
        scan_B: int64 scan codes of this rank's clips (`usvs_dist.data.scan_mix.scan_code`).
        t0_B: clip start times in seconds.
        mode: keep, mask or window (objective.same_scan_negatives).
        window_s: window's half-width in seconds (objective.same_scan_window_s).

    Returns:
        Bool [B, N] over the gathered batch (rank order), False on each row's positive column;
        None when nothing is excluded (keep), so the losses run exactly as without the option.
    """
    if mode not in MODES:
        raise ValueError(f"objective.same_scan_negatives={mode!r} is not {', '.join(MODES)}")
    if mode == "keep":
        return None
    if scan_B.shape != t0_B.shape or scan_B.dim() != 1:
        raise ValueError(
            f"scan ids {tuple(scan_B.shape)} and start times {tuple(t0_B.shape)} must both be [B]"
        )
    scan_B = scan_B.to(torch.int64)
    t0_B = t0_B.to(torch.float64)
    # One collective: the float64 start times travel bit for bit as int64 beside the scan codes.
    scan_N, t0_bits_N = collectives.gather_nograd(
        torch.stack([scan_B, t0_B.view(torch.int64)], dim=1)
    ).unbind(1)
    t0_N = t0_bits_N.contiguous().view(torch.float64)
    exclude_BN = scan_B[:, None] == scan_N[None, :]
    if mode == "window":
        exclude_BN &= (t0_B[:, None] - t0_N[None, :]).abs() <= window_s + _TOLERANCE_S
    rows_B = collectives.global_rows(scan_B.shape[0], scan_B.device)
    exclude_BN[torch.arange(len(rows_B), device=rows_B.device), rows_B] = False  # never the positive
    return exclude_BN
