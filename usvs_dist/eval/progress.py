"""Progress of evaluation on stderr: a tqdm bar on a terminal, one plain line per step elsewhere
(Ray job logs and CI keep every line, and a carriage return there makes one unreadable line).

Off unless switched on (`shown(True)`, as `python -m usvs_dist.evaluate` does without --quiet),
so periodic evaluation during training and library callers print nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from tqdm import tqdm

_enabled = False
"""What `progress` and `note` do when not told: set by `shown`."""


@contextlib.contextmanager
def shown(enabled: bool) -> Iterator[None]:
    """Within it, progress is shown (or not) unless a call says otherwise; restored after."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def _on(enabled: bool | None) -> bool:
    return _enabled if enabled is None else enabled


@contextlib.contextmanager
def progress(
    total: int, desc: str, enabled: bool | None = None, unit: str = "fold"
) -> Iterator[Callable[[], None]]:
    """Yields `advance()`, to call once per finished unit (a fold): a bar on a terminal, else a
    line `desc: fold k/total (s s)` per call; nothing when disabled."""
    if not _on(enabled):
        yield lambda: None
        return
    stream = sys.stderr
    if stream.isatty():
        with tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True) as bar:
            yield lambda: bar.update(1)
        return
    start, done = time.perf_counter(), 0

    def advance() -> None:
        nonlocal done
        done += 1
        print(f"{desc}: {unit} {done}/{total} ({time.perf_counter() - start:.1f} s)", file=stream, flush=True)

    yield advance


def note(text: str, enabled: bool | None = None) -> None:
    """One line of progress (a task started or finished), printed without breaking a live bar."""
    if not _on(enabled):
        return
    if sys.stderr.isatty():
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
