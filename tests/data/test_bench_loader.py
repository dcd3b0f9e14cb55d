"""`bench loader` times the three paths on real shards and ends with its figures line."""

from __future__ import annotations

import re

from usvs_dist.bench.loader import run


def test_loader_bench_prints_the_table_and_the_figures_line(phantom_shards):
    lines: list[str] = []
    vs_raw, vs_naive, frames_ratio = run(
        str(phantom_shards), ["data.batch_size=4"], clips=12, repeats=1, print_fn=lines.append
    )
    assert re.fullmatch(r"vs_raw=\d+\.\d{3} vs_naive=\d+\.\d{3} frames_ratio=\d+\.\d{3}", lines[-1])
    names = {line[:50].strip() for line in lines}
    assert {"raw Decord (ceiling)", "naive PyAV per file", "loader, 1 worker", "loader, 2 workers"} <= names
    consumer = [line for line in lines if "finishing on" in line]
    assert len(consumer) == 2 and all(len(line.split()) >= 9 for line in consumer)  # name, rate, 2 ratios
    # 16 stored frames per clip, 8 + 1 used: Decord decodes at most all 16 per 9 (distinct) used.
    assert vs_raw > 0 and vs_naive > 0 and 1.0 <= frames_ratio <= 16 / 8
