"""Where scans are cut: in this process, in local worker processes, or as Ray tasks.

Every runner yields results in the order of its tasks, so shards hold the same clips in the
same order (and, with x264's thread count fixed, the same bytes) however many workers cut them.
At most `window` scans are in flight, which bounds the clips held in memory.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Any

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOCAL_RAY = "local"
"""`--ray-address local`: start a Ray instance on this machine (demos and tests)."""


def run_inline(fn: Callable, tasks: Iterable, arg: Any) -> Iterator:
    """fn(task, arg) for each task, in this process."""
    for task in tasks:
        yield fn(task, arg)


def run_processes(fn: Callable, tasks: Iterable, arg: Any, workers: int) -> Iterator:
    """fn(task, arg) on `workers` spawned processes, results in task order."""
    # spawn, not fork: the parent may hold FFmpeg or BLAS threads, which fork does not copy.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from _ordered(lambda t: pool.submit(fn, t, arg), lambda f: f.result(), tasks, 2 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(fn: Callable, tasks: Iterable, arg: Any, address: str, workers: int | None) -> Iterator:
    """fn(task, arg) as Ray tasks of one CPU each on the cluster at `address`, results in task order."""
    import ray

    started = not ray.is_initialized()
    if started:
        if address == LOCAL_RAY:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        window = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        arg_ref = ray.put(arg)
        yield from _ordered(lambda t: remote.remote(t, arg_ref), ray.get, tasks, 2 * window)
    finally:
        if started:
            ray.shutdown()


def _ordered(submit: Callable, wait: Callable, tasks: Iterable, window: int) -> Iterator:
    pending = iter(tasks)
    in_flight = deque(submit(t) for t in islice(pending, window))
    while in_flight:
        result = wait(in_flight.popleft())
        for t in islice(pending, 1):
            in_flight.append(submit(t))
        yield result


def ray_address(cli_address: str | None) -> str | None:
    """The Ray cluster to use: --ray-address, else $RAY_ADDRESS (set by `ray job submit`), else None."""
    return cli_address or os.environ.get(RAY_ADDRESS_ENV) or None


def describe(workers: int, address: str | None) -> str:
    """Where make_runner(workers, address) cuts scans, for the build's log."""
    if address:
        cap = f", at most {2 * workers} in flight" if workers > 1 else ""
        return f"Ray tasks on the cluster at {address}{cap}"
    return f"{workers} local worker processes" if workers > 1 else "this process"


def make_runner(workers: int, address: str | None) -> Callable[[Callable, Iterable, Any], Iterator]:
    """The runner for `--workers N` and a Ray address (which wins when given)."""
    if address:
        return lambda fn, tasks, arg: run_ray(fn, tasks, arg, address, workers if workers > 1 else None)
    if workers > 1:
        return lambda fn, tasks, arg: run_processes(fn, tasks, arg, workers)
    return run_inline
