"""Task functions that kill their own worker process, for the crash-isolation tests.

They live in an importable module (not in a test function) because spawned worker processes
import the function by name; monkeypatching cannot reach across spawn. Every worker imports this
module, so it imports the cutter only in cut_or_die: a worker of square_or_die starts in a
fraction of a second.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sharding.deid import hash_id
from tests.conftest import SALT

if TYPE_CHECKING:
    from sharding.cut import ClipOptions, ScanResult, ScanTask

CRASH_ALWAYS = "crash-always"
"""A scan_id whose every cut kills its worker (a scan that segfaults FFmpeg each time)."""
CRASH_ONCE = "crash-once"
"""A scan_id whose first cut kills its worker (a scan killed for memory beside others)."""
ONCE_FLAG_ENV = "USVS_TEST_CRASH_ONCE_FLAG"
"""File whose creation marks that the crash-once scan has died once (workers inherit the env)."""


def square_or_die(x: int, arg: dict) -> int:
    """x * x after arg["sleep"] seconds; kills its own process for x in arg["die"] (every try)."""
    time.sleep(arg.get("sleep", 0.0))
    if x in arg.get("die", ()):
        os.kill(os.getpid(), signal.SIGKILL)
    if x in arg.get("exit", ()):
        os._exit(3)
    return x * x


def cut_or_die(task: ScanTask, opts: ClipOptions) -> ScanResult:
    """cut_scan, except that the scans named above kill their worker process (SIGKILL).

    Workers see scans by their hash only (raw ids stay in the build process).
    """
    from sharding.cut import cut_scan

    if task.scan_hash == hash_id(SALT, "scan", CRASH_ALWAYS):
        os.kill(os.getpid(), signal.SIGKILL)
    if task.scan_hash == hash_id(SALT, "scan", CRASH_ONCE):
        flag = Path(os.environ[ONCE_FLAG_ENV])
        if not flag.exists():
            flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return cut_scan(task, opts)
