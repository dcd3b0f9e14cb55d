"""`bench loader` times every decoder's paths on real shards and ends with its figures line."""

from __future__ import annotations

import re

from usvs_dist.bench.loader import run
from usvs_dist.data.backends import usable_decoders


def test_loader_bench_prints_the_table_and_the_figures_line(phantom_shards):
    lines: list[str] = []
    vs_raw, vs_naive, frames_ratio = run(
        str(phantom_shards), ["data.batch_size=4"], clips=12, repeats=1, print_fn=lines.append
    )
    figures = re.fullmatch(
        r"vs_raw=\d+\.\d{3} vs_naive=\d+\.\d{3} frames_ratio=\d+\.\d{3} "
        r"decoder=decord raw_fastest=(decord|torchcodec)",
        lines[-1],
    )
    assert figures, lines[-1]
    decoders = usable_decoders()
    names = {line[:64].strip().removesuffix(" (ceiling)") for line in lines}
    for decoder in decoders:
        assert {f"raw {decoder}", f"loader {decoder}, 1 worker", f"loader {decoder}, 2 workers"} <= names
    # vs_raw is against the faster raw decoder: its own row reads 1.000.
    fastest = next(line for line in lines if line.startswith(f"raw {figures.group(1)} (ceiling)"))
    assert fastest.split()[-1] == "1.000"
    assert "naive PyAV per file" in names
    consumer = [line for line in lines if "finishing on" in line]
    # name, rate, 2 ratios and the frames ratio
    assert len(consumer) == 2 * len(decoders) and all(len(line.split()) >= 10 for line in consumer)
    # 16 stored frames per clip, 8 + 1 used: a decoder decodes at most all 16 per 9 (distinct) used.
    assert vs_raw > 0 and vs_naive > 0 and 1.0 <= frames_ratio <= 16 / 8
