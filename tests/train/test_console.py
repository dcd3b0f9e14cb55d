"""Rank 0's console progress line: its fields, the ETA, and plain lines only."""

from __future__ import annotations

import math

from usvs_dist.train.console import ConsoleProgress, clock, progress_line

METRICS = {"loss": 2.3141, "clips_per_s": 85.24, "lr": 3e-4, "samples_seen": 640.0}


def test_a_line_has_step_loss_throughput_lr_elapsed_and_eta():
    # 40 of 300 steps in 48 s: 1.2 s a step, so 260 steps left take 312 s.
    line = progress_line(40, 300, METRICS, 48.0, 40)
    assert line == "step 40/300 loss 2.314 clips/s 85.2 lr 3.0e-4 elapsed 0:00:48 eta 0:05:12"


def test_gpu_memory_is_shown_when_the_step_logged_it():
    line = progress_line(40, 300, {**METRICS, "peak_gpu_mib": 12.3 * 1024}, 48.0, 40)
    assert " lr 3.0e-4 gpu_mem 12.3 GiB elapsed " in line


def test_a_resumed_run_times_only_the_steps_it_ran():
    # Resumed at step 100: 20 steps in 60 s, 180 left -> 540 s.
    assert progress_line(120, 300, METRICS, 60.0, 20).endswith("elapsed 0:01:00 eta 0:09:00")


def test_eta_unknown_before_a_step_and_zero_at_the_end():
    assert progress_line(0, 10, METRICS, 0.0, 0).endswith("eta ?")
    assert progress_line(10, 10, METRICS, 3725.0, 10).endswith("elapsed 1:02:05 eta 0:00:00")
    assert clock(math.nan) == "?" and clock(90061) == "25:01:01"


def test_progress_prints_plain_lines_on_its_cadence_and_nothing_when_off():
    now = iter([100.0, 112.0, 124.0])  # start, then one call per line
    printed: list[str] = []
    progress = ConsoleProgress(4, 0, enabled=True, print_fn=printed.append, now=lambda: next(now))
    progress.show(2, METRICS)
    progress.show(4, METRICS)
    assert printed == [
        "step 2/4 loss 2.314 clips/s 85.2 lr 3.0e-4 elapsed 0:00:12 eta 0:00:12",
        "step 4/4 loss 2.314 clips/s 85.2 lr 3.0e-4 elapsed 0:00:24 eta 0:00:00",
    ]
    assert not any(c in "".join(printed) for c in "\r\x1b\n")  # no redraws, colours or line breaks

    quiet: list[str] = []
    ConsoleProgress(4, 0, enabled=False, print_fn=quiet.append).show(2, METRICS)
    assert quiet == []


def test_the_default_output_is_flushed_stdout_lines(capsys):
    ConsoleProgress(4, 0, enabled=True).show(1, METRICS)
    out = capsys.readouterr().out
    assert out.startswith("step 1/4 loss ") and out.endswith("\n") and out.count("\n") == 1
