"""Rank 0's progress line on the console, every train.log_every steps (train.console).

One plain line a step, no carriage returns or colours: it lands in Ray job logs and files, which
show a redrawn bar as garbage. ETA is wall time: the elapsed time of this process's steps (their
evaluations and checkpoints included) per step, times the steps left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping


def clock(seconds: float) -> str:
    """`h:mm:ss` (hours unbounded), or `?` when not known (no step timed yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _lr(lr: float) -> str:
    """`3.0e-4`: one decimal, exponent without padding."""
    mantissa, _, exponent = f"{lr:.1e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def progress_line(
    step: int, steps: int, metrics: Mapping[str, float], elapsed_s: float, steps_done: int
) -> str:
    """`step 40/300 loss 2.31 clips/s 85.2 lr 3.0e-4 [gpu_mem 12.3 GiB] elapsed 0:00:48 eta 0:05:12`.

    `metrics` is what the step logs (MetricsWindow.summary: loss, clips_per_s, lr, and
    peak_gpu_mib on a GPU); `elapsed_s` is the wall time of the `steps_done` steps this process
    ran (a resumed run counts from where it picked up), which sets the ETA of the steps left.
    """
    parts = [
        f"step {step}/{steps}",
        f"loss {metrics['loss']:.4g}",
        f"clips/s {metrics['clips_per_s']:.1f}",
        f"lr {_lr(metrics['lr'])}",
    ]
    if "peak_gpu_mib" in metrics:
        parts.append(f"gpu_mem {metrics['peak_gpu_mib'] / 1024:.1f} GiB")
    eta = elapsed_s / steps_done * (steps - step) if steps_done > 0 else math.nan
    parts += [f"elapsed {clock(elapsed_s)}", f"eta {clock(eta)}"]
    return " ".join(parts)


class ConsoleProgress:
    """Times the run from the step it starts at and prints progress lines (or nothing when off)."""

    def __init__(
        self,
        steps: int,
        first_step: int,
        enabled: bool,
        print_fn: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.monotonic,
    ):
        self.steps, self.first_step, self.enabled = steps, first_step, enabled
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self.now, self.start = now, now()

    def show(self, step: int, metrics: Mapping[str, float]) -> None:
        """Print step `step`'s line (when enabled)."""
        if self.enabled:
            elapsed = self.now() - self.start
            self.print_fn(progress_line(step, self.steps, metrics, elapsed, step - self.first_step))
