"""The step benchmark times the batch the loader really yields (shapes), with the same loss, and
its ratio comes from interleaved blocks of the two paths (a fake clock: no timed asserts)."""

from __future__ import annotations

import re
import statistics

from usvs_dist.bench.step import (
    CLOCKS,
    PLAIN,
    RAY,
    Interleaved,
    interleave,
    plain_step,
    report,
    synthetic_batch,
)
from usvs_dist.config import load_config
from usvs_dist.data.pipeline import EpochLoader


def test_synthetic_batch_has_the_loaders_shapes(phantom_shards):
    cfg = load_config(None, ["data.batch_size=3", "data.loader_workers=0", "data.num_frames=5"])
    real = next(iter(EpochLoader(cfg.data, phantom_shards, rank=0, world_size=1).epoch(0)))
    fake = synthetic_batch(cfg)
    assert {k: v.shape for k, v in fake.items()} == {k: real[k].shape for k in fake}


def test_plain_step_runs_in_timed_blocks():
    cfg = load_config(None, ["model.width=2", "model.embed_dim=8", "data.batch_size=2", "data.num_frames=2"])
    step = plain_step(cfg)
    results = interleave(step, step, rounds=1, block_steps=2, warmup_rounds=0, clocks=CLOCKS)
    assert results.keys() == {"wall", "cpu"}
    for result in results.values():
        assert [len(b) for b in result.blocks] == [2] * 4 and all(t > 0 for b in result.blocks for t in b)


class _FakeClock:
    """Time that moves only when a fake step runs: each step costs what its path says now."""

    def __init__(self):
        self.now = 0.0
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self, cost) -> None:
        self.now += cost(self.steps)
        self.steps += 1


def test_rounds_run_abba_blocks_and_warmup_is_discarded():
    clock = _FakeClock()
    result = interleave(
        lambda: clock.step(lambda i: 1.0),
        lambda: clock.step(lambda i: 2.0),
        rounds=2,
        block_steps=3,
        warmup_rounds=1,
        clocks={"fake": clock},
    )["fake"]
    # 3 rounds of 4 blocks of 3 steps ran; the first round (12 steps) is not recorded.
    assert clock.steps == 36
    assert result.order == [PLAIN, RAY, RAY, PLAIN] * 2
    assert all(len(b) == 3 for b in result.blocks)
    assert result.path_times(PLAIN) == [1.0] * 12 and result.path_times(RAY) == [2.0] * 12
    assert result.round_ratios() == [2.0] * 2 and result.ratio == 2.0


def test_ratio_is_the_median_of_round_ratios_under_a_changing_load():
    # The machine slows down 1 % per step and a burst of load triples steps 40-45: the ratio of
    # whole-run medians would be off; ABBA cancels the drift, the median drops the burst's round.
    clock = _FakeClock()

    def load(i: int) -> float:
        return (1 + 0.01 * i) * (3.0 if 40 <= i < 46 else 1.0)

    result = interleave(
        lambda: clock.step(lambda i: 0.05 * load(i)),
        lambda: clock.step(lambda i: 0.06 * load(i)),
        rounds=5,
        block_steps=4,
        warmup_rounds=0,
        clocks={"fake": clock},
    )["fake"]
    ratios = result.round_ratios()
    assert len(ratios) == 5
    assert result.ratio == statistics.median(ratios)
    for r in range(5):
        medians = [statistics.median(b) for b in result.blocks[4 * r : 4 * r + 4]]
        assert ratios[r] == (medians[1] + medians[2]) / (medians[0] + medians[3])
    assert ratios[2] > 1.3  # the burst's round
    assert abs(result.ratio - 1.2) < 1e-9
    assert statistics.median(result.path_times(RAY)) / statistics.median(result.path_times(PLAIN)) > 1.21


def test_report_prints_the_table_and_the_ratio_line():
    cfg = load_config(None, ["train.num_workers=1"])
    order = [PLAIN, RAY, RAY, PLAIN] * 2
    results = {
        "wall": Interleaved(order, [[0.06] * 2] * 4 + [[0.06]] * 4),
        "cpu": Interleaved(
            order, [[0.05, 0.06], [0.06, 0.07], [0.055] * 2, [0.05] * 2, [0.05], [0.06], [0.06], [0.05]]
        ),
    }
    lines: list[str] = []
    ratio = report(cfg, results, threads=1, warmup_rounds=2, print_fn=lines.append)
    # The step_ratio is on CPU time: the median of its rounds' ABBA ratios.
    assert ratio == statistics.median([(0.065 + 0.055) / (0.055 + 0.05), 1.2])
    assert re.fullmatch(
        r"step_ratio=\d+\.\d{3} ratio_q1=\d+\.\d{3} ratio_q3=\d+\.\d{3} plain_ms=\d+\.\d ray_ms=\d+\.\d "
        r"wall_ratio=\d+\.\d{3}",
        lines[-1],
    )
    assert lines[-1].startswith(f"step_ratio={ratio:.3f} ")
    assert "plain_ms=50.0 ray_ms=60.0 wall_ratio=1.000" in lines[-1]
    assert sum(line.startswith("plain PyTorch") for line in lines) == 2
    assert any(line.startswith("per-round ratio, cpu time: median") for line in lines)
