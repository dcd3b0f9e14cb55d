"""How many of a batch's clip pairs come from one scan: the loader's batches against uniform sampling.

Contrastive losses take every other clip of the (global) batch as a negative. Adjacent clips of
one scan look and sound alike, so the share of same-scan pairs says how many of those negatives
are near-duplicates of the positive. Uniform sampling of the split sets the floor: a split of few
long scans has same-scan pairs even when every batch is a uniform draw.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable


def same_scan_pair_share(scans: Iterable[str]) -> float:
    """Share of the batch's unordered clip pairs whose two clips come from the same scan."""
    counts = Counter(scans)
    n = sum(counts.values())
    if n < 2:
        return float("nan")
    return sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))


def uniform_same_scan_share(clips_per_scan: Iterable[int]) -> float:
    """Expected same-scan pair share of a batch drawn uniformly without replacement from the split.

    Two distinct clips drawn at random come from scan s with probability c_s (c_s - 1) / (N (N - 1)),
    whatever the batch size.
    """
    counts = [c for c in clips_per_scan if c > 0]
    n = sum(counts)
    if n < 2:
        return float("nan")
    return sum(c * (c - 1) for c in counts) / (n * (n - 1))


def scan_code(scan: str) -> int:
    """A 56-bit integer standing for a scan id, so ranks can gather scan ids as a tensor."""
    return int.from_bytes(hashlib.blake2b(scan.encode(), digest_size=7).digest(), "big")
