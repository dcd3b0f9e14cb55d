"""Batches drawn across scans: the same-scan pair share, the bench that measures it, the plan's cut."""

from __future__ import annotations

import itertools
import random

import pytest

from usvs_dist.bench import batches as batches_bench
from usvs_dist.config.schema import DataConfig
from usvs_dist.data.epoch import plan_epoch, read_order
from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.scan_mix import same_scan_pair_share, scan_code, uniform_same_scan_share


def _naive_share(scans: list[str]) -> float:
    pairs = list(itertools.combinations(scans, 2))
    return sum(a == b for a, b in pairs) / len(pairs)


def test_the_share_counts_unordered_same_scan_pairs_like_a_loop_over_pairs():
    rng = random.Random(0)
    for _ in range(20):
        scans = [rng.choice("abcd") for _ in range(rng.randrange(2, 12))]
        assert same_scan_pair_share(scans) == pytest.approx(_naive_share(scans))
    assert same_scan_pair_share(["a", "b", "c"]) == 0.0 and same_scan_pair_share(["a", "a"]) == 1.0


def test_uniform_share_is_the_mean_over_uniform_draws():
    counts = {"a": 30, "b": 10, "c": 5}
    split = [s for s, n in counts.items() for _ in range(n)]
    rng = random.Random(1)
    draws = [same_scan_pair_share(rng.sample(split, 8)) for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(uniform_same_scan_share(counts.values()), abs=0.01)


def test_scan_codes_are_stable_and_tell_scans_apart():
    assert scan_code("abc") == scan_code("abc") != scan_code("abd")
    assert 0 <= scan_code("abc") < 2**56


def test_every_stream_gets_interleave_units_from_several_shards_and_reads_them_proportionally():
    plan = plan_epoch([40] * 6, epoch=0, seed=0, world_size=2, workers=2, batch_size=4, stream_units=8)
    assert all(len(s) >= 8 for s in plan.streams)
    assert all(len({u.shard for u in s}) >= 5 for s in plan.streams)
    # One big and one small unit: the big one's clips are spread over the whole order, not last.
    order = read_order(plan.streams[0][:2], 2, "s")
    big = max((0, 1), key=lambda u: plan.streams[0][u].clips)
    first_half = order[: len(order) // 2]
    assert 0 < first_half.count(1 - big) < len(first_half)


def test_the_loader_mixes_scans_near_uniform_and_better_than_reading_shards_in_turn(phantom_shards):
    def ratio(interleave: int) -> float:
        cfg = DataConfig(batch_size=4, interleave=interleave)
        loaders = [EpochLoader(cfg, phantom_shards, r, 2) for r in range(2)]
        scans = batches_bench.split_scans(loaders[0])
        uniform = uniform_same_scan_share([scans.count(s) for s in set(scans)])
        shares = [same_scan_pair_share(b) for e in range(6) for b in batches_bench.global_batches(loaders, e)]
        return sum(shares) / len(shares) / uniform

    mixed, in_turn = ratio(16), ratio(1)
    assert mixed < 1.5 and mixed < in_turn


def test_bench_batches_prints_both_shares_and_ends_with_the_ratio(phantom_shards, capsys):
    batches_bench.run(str(phantom_shards), ["data.batch_size=2"], world_size=2, epochs=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[1].startswith("loader   same_scan_pair_share=") and out[2].startswith("uniform")
    assert out[-1].startswith("same_scan_ratio=") and float(out[-1].split("=")[1]) > 0
