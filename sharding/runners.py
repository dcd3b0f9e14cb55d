"""Where scans are cut: in this process, in local worker processes, or as Ray tasks.

Every runner yields results in the order of its tasks, so shards hold the same clips in the
same order (and, with x264's thread count fixed, the same bytes) however many workers cut them.
At most `window` scans are in flight, which bounds the clips held in memory.

A worker that dies (killed for memory, a segfault inside FFmpeg) costs only its own task: the
task is retried, and when it dies again `on_crash(task, reason)` gives the result in its place
(the build turns it into a failed scan). Worker processes end when the build process does, even
when it is killed with SIGKILL and cannot clean up.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOCAL_RAY = "local"
"""`--ray-address local`: start a Ray instance on this machine (demos and tests)."""
RAY_MAX_RETRIES = 2
"""Ray retries a task whose worker died this many times before ray.get raises."""
PARENT_POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

OnCrash = Callable[[Any, str], Any]
"""on_crash(task, reason) -> the result to yield for a task whose worker died on every try."""


class WorkerDied(RuntimeError):
    """A task's worker process died on every try and no on_crash was given."""


def run_inline(fn: Callable, tasks: Iterable, arg: Any) -> Iterator:
    """fn(task, arg) for each task, in this process."""
    for task in tasks:
        yield fn(task, arg)


def run_processes(
    fn: Callable, tasks: Iterable, arg: Any, workers: int, on_crash: OnCrash | None = None
) -> Iterator:
    """fn(task, arg) on `workers` spawned processes, results in task order.

    When a worker dies, the pool is broken and every task in it unfinished. Those tasks are run
    again one at a time, each alone in a fresh process, so a second death is the task's own and
    the others finish; a task that dies alone yields on_crash(task, reason) (or raises
    WorkerDied without on_crash). Then a new pool takes the remaining tasks.
    """
    # spawn, not fork: the parent may hold FFmpeg or BLAS threads, which fork does not copy.
    ctx = multiprocessing.get_context("spawn")
    pending = iter(tasks)
    window = 2 * workers
    slots: deque[_Slot] = deque()
    pool = _pool(ctx, workers)
    try:
        while True:
            for task in islice(pending, window - len(slots)):
                slots.append(_Slot(task))
            _submit_unsent(pool, slots, fn, arg)
            if not slots:
                return
            try:
                result = slots[0].result()
            except BrokenProcessPool:
                pool.shutdown(wait=True)  # joins the pool's manager: every future is settled
                _rerun_alone(ctx, fn, arg, slots, on_crash)
                pool = _pool(ctx, workers)
                continue
            slots.popleft()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Slot:
    """A task in flight: its future in the pool, or its result once known."""

    _UNSET = object()

    def __init__(self, task: Any):
        self.task = task
        self.future: Future | None = None
        self.value: Any = self._UNSET

    def result(self) -> Any:
        """The task's result; BrokenProcessPool when its pool broke before it was sent or done."""
        if self.value is not self._UNSET:
            return self.value
        if self.future is None:
            raise BrokenProcessPool("the pool broke before this task was sent")
        return self.future.result()

    def lost(self) -> bool:
        """Sent to a pool that broke before the task finished (it may be the one that died)."""
        if self.value is not self._UNSET or self.future is None:
            return False
        if not self.future.done() or self.future.cancelled():
            return True
        return isinstance(self.future.exception(), BrokenProcessPool)


def _pool(ctx, workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)
    )


def _submit_unsent(pool: ProcessPoolExecutor, slots: deque[_Slot], fn: Callable, arg: Any) -> None:
    for slot in slots:
        if slot.future is None and slot.value is _Slot._UNSET:
            try:
                slot.future = pool.submit(fn, slot.task, arg)
            except BrokenProcessPool:
                return  # the wait on the first slot meets the break and recovers


def _rerun_alone(ctx, fn: Callable, arg: Any, slots: deque[_Slot], on_crash: OnCrash | None) -> None:
    """Run each task lost with a broken pool alone, in task order, and keep its result.

    Alone, a death is attributable, and the task has the memory to itself (a scan killed for
    memory beside others may pass); crashes are rare, so doing these one by one costs little.
    """
    for slot in slots:
        if slot.lost():
            slot.future = None
            died, slot.value = _run_alone(ctx, fn, slot.task, arg)
            if died is not None:
                reason = f"worker process died ({died}) twice"
                if on_crash is None:
                    raise WorkerDied(reason)
                slot.value = on_crash(slot.task, reason)


def _run_alone(ctx, fn: Callable, task: Any, arg: Any) -> tuple[str | None, Any]:
    """(None, fn(task, arg)) from a fresh process, or (how it died, None); fn's errors re-raise."""
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_call_and_send, args=(fn, task, arg, send, os.getpid()), daemon=True)
    proc.start()
    send.close()  # else recv below would wait forever for a writer that is this process
    try:
        ok, value = receive.recv()
    except EOFError:  # the process died before sending
        proc.join()
        code = proc.exitcode
        return (f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"), None
    finally:
        receive.close()
    proc.join()
    if not ok:
        raise value
    return None, value


def _call_and_send(fn: Callable, task: Any, arg: Any, send, parent: int) -> None:
    _exit_with_parent(parent)
    try:
        outcome = (True, fn(task, arg))
    except Exception as exc:  # sent back and raised in the build, as a pool worker's would be
        outcome = (False, exc)
    send.send(outcome)
    send.close()


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this process as soon as `parent` (the build) is gone.

    A worker blocks on its task queue, whose write end it holds itself, so it would wait forever
    after a SIGKILL of the build. On Linux the kernel sends SIGKILL at the parent's death
    (PR_SET_PDEATHSIG; this also ends a worker stuck in C code holding the GIL); a daemon thread
    polling the parent pid covers other systems. PR_SET_PDEATHSIG fires when the thread that
    spawned the worker exits: the runners spawn from the thread that consumes their results.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # no prctl: the poll below still ends the worker
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the death signal was armed
    threading.Thread(target=_poll_parent, args=(parent,), daemon=True, name="exit-with-parent").start()


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def run_ray(
    fn: Callable,
    tasks: Iterable,
    arg: Any,
    address: str,
    workers: int | None,
    on_crash: OnCrash | None = None,
) -> Iterator:
    """fn(task, arg) as Ray tasks of one CPU each on the cluster at `address`, results in task order.

    Ray retries a task whose worker died RAY_MAX_RETRIES times; when the last try dies too, the
    task yields on_crash(task, reason) (without on_crash, Ray's error is raised).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        if address == LOCAL_RAY:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        window = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(fn)
        arg_ref = ray.put(arg)
        yield from _ordered(
            lambda t: (t, remote.remote(t, arg_ref)),
            lambda pair: _ray_result(*pair, on_crash),
            tasks,
            2 * window,
        )
    finally:
        if started:
            ray.shutdown()


def _ray_result(task: Any, ref: Any, on_crash: OnCrash | None) -> Any:
    """ray.get(ref), or on_crash(task, reason) when every try of the task died with its worker."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

    deaths = (WorkerCrashedError, OutOfMemoryError)
    try:
        return ray.get(ref)
    except (*deaths, RayTaskError) as exc:
        crash = exc.cause if isinstance(exc, RayTaskError) else exc
        if on_crash is None or not isinstance(crash, deaths):
            raise  # an error of fn itself is a bug to see, not a scan to skip
        return on_crash(task, f"Ray worker died ({type(crash).__name__}) {1 + RAY_MAX_RETRIES} times")


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


def describe(workers: int, address: str | None, isolate: bool = False) -> str:
    """Where make_runner(workers, address, isolate=...) cuts scans, for the build's log."""
    if address:
        cap = f", at most {2 * workers} in flight" if workers > 1 else ""
        return f"Ray tasks on the cluster at {address}{cap}"
    if workers > 1:
        return f"{workers} local worker processes"
    return "1 worker process" if isolate else "this process"


def make_runner(
    workers: int, address: str | None, on_crash: OnCrash | None = None, isolate: bool = False
) -> Callable[[Callable, Iterable, Any], Iterator]:
    """The runner for `--workers N` and a Ray address (which wins when given).

    `on_crash(task, reason)` gives the result of a task whose worker died on every try. With one
    worker, `isolate` still cuts in a worker process (what the CLI does), so a crashing decoder
    costs its scan; in this process there is no worker to lose (a crash there ends the build).
    """
    if address:
        return lambda fn, tasks, arg: run_ray(
            fn, tasks, arg, address, workers if workers > 1 else None, on_crash
        )
    if workers > 1 or isolate:
        return lambda fn, tasks, arg: run_processes(fn, tasks, arg, max(1, workers), on_crash)
    return run_inline
