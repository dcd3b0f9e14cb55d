"""`bench loss` runs two gloo ranks and reports gathered vs naive figures (no timed asserts)."""

from __future__ import annotations

import re

from usvs_dist.bench.loss import run


def test_loss_bench_prints_the_table_and_the_ratio_line():
    lines: list[str] = []
    memory_ratio, time_ratio = run(world=2, batch=64, dim=8, device="cpu", repeats=2, print_fn=lines.append)
    assert re.fullmatch(r"memory_ratio=\d+\.\d{3} time_ratio=\d+\.\d{3}", lines[-1])
    assert any(line.startswith("info_nce    gathered") for line in lines)
    # With D small the logits dominate: B x N per rank must take less than N x N.
    assert 0 < memory_ratio < 0.9 and time_ratio > 0
