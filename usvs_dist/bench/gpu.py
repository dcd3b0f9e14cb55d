"""`bench gpu`: the paper configs on one CUDA GPU, the video encoder's TFLOP/s and the loader's headroom.

One prepared check for a machine with a GPU, about 8 minutes on one (`budget_s`), in stages:

1. `pytest -m gpu tests` (time-boxed): bf16 forward/backward of each paper encoder, SyncBatchNorm
   over an NCCL group, the loader with `data.decode_device=auto` finishing its batches on the GPU.
2. The video encoder of configs/usvs2020.yaml (R(2+1)D-18) alone: forward + backward of one
   [B, C, T, H, W] batch of the paper's shape, module and batch in bf16 as DeepSpeed's bf16 mode
   holds them (not autocast). FLOPs counted once by torch.utils.flop_counter.FlopCounterMode
   (convolutions and matmuls, 2 per multiply-add; BatchNorm and ReLU are not counted), time by
   CUDA events over `ENCODER_ITERS` steps after `ENCODER_WARMUP`; achieved TFLOP/s against the
   GPU's dense bf16 peak (BF16_DENSE_PEAK_TFLOPS).
3. The loader alone (EpochLoader with the paper's data settings, finishing batches on the GPU,
   `data.decode_device=auto`), once per decoder (Decord, and TorchCodec with NVDEC when it is
   installed with FFmpeg; the faster one is the figure): clips/s from each epoch's first batch
   to its last (worker start-up is not throughput), summed over epochs until
   `LOADER_MIN_BATCHES` are timed.
4. Each paper config trains `steps` steps through `python -m usvs_dist.train` (Ray Train, one
   worker, NCCL, bf16, DeepSpeed ZeRO as configured, `model.sync_bn=true`,
   `data.decode_device=auto`), each within an equal share of the time left; MLflow gives back
   the steady `clips_per_s` (median after `STEADY_AFTER` steps) and `peak_gpu_mib`.

The last line: `gpu=<name> video_tflops=… bf16_peak_share=… loader_clips_per_s=…
step_clips_per_s=… loader_headroom=… encoder_clips_per_s=…`. step_clips_per_s is the fastest
paper config's steady clips/s as it trained (the loader must feed the most demanding one);
loader_headroom = loader_clips_per_s / step_clips_per_s. A run's clips/s includes waiting for the
loader, so a headroom near 1 means the training was loader-bound; encoder_clips_per_s (B / the
video encoder's step) is the compute-only rate of the video path, an upper bound on its demand.

Shards: SHARDS, or the phantom cache at the paper's frame size (BENCH_PHANTOM: 128 px, 16 frames
per 2 s clip, enough train clips for 6 loader workers x batch 32 to yield several batches an
epoch), built on all cores the first time (the same bytes `python -m usvs_dist.train` would
build serially under the same phantom.* settings).

Without CUDA it prints one line saying so and returns 0: nothing here means anything on a CPU.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from usvs_dist.config import DataConfig, RootConfig
from usvs_dist.config.schema import PhantomConfig

REPO = Path(__file__).resolve().parents[2]
PAPER_RECIPES = ("usvs2020", "dual2024", "isbi2020", "awcl2022")
NO_CUDA = "no CUDA device: bench gpu needs one (torch.cuda.is_available() is False); nothing run"

# NVIDIA's datasheet figures for dense BF16 tensor-core throughput, TFLOP/s (the datasheets'
# headline BF16 figures assume 2:4 structured sparsity and are twice these). Matched against
# torch.cuda.get_device_name() in order, the first pattern that matches wins: variants before
# their family ("NVIDIA H100 PCIe" before "NVIDIA H100 80GB HBM3", the SXM part), and word
# boundaries so that L4 does not match L40S, nor A10 A100.
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM5
    (r"\bH200\b.*\bNVL\b", 835.0),
    (r"\bH200\b", 989.0),  # SXM
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),  # SXM4 and PCIe alike
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)

BENCH_PHANTOM = {"scans": 24, "seconds": 40.0, "fps": 8.0, "size": 128, "split_fractions": [0.8, 0.1, 0.1]}
"""phantom.* of the bench's shards: 24 scans x 20 two-second clips of 16 frames (the papers
sample 14) at 128 px; 420 train clips (21 patients: the bench trains, so most go to train), so 6
loader workers x batch 32 get 2 batches each an epoch."""
STEADY_AFTER = 3
"""Logged steps left out of a run's steady clips/s: start-up, cuDNN's first calls, DeepSpeed's."""
ENCODER_WARMUP, ENCODER_ITERS = 5, 20
LOADER_MIN_BATCHES = 24
LOADER_BUDGET_S = 60.0
TESTS_BUDGET_S = 90.0
MIN_RUN_S = 45.0
"""A paper config is not started with less time left than this (it is reported as skipped)."""


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU named `device_name` (BF16_DENSE_PEAK_TFLOPS); None if unknown."""
    for pattern, tflops in BF16_DENSE_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s of `flops` floating-point operations done in `seconds`."""
    return flops / seconds / 1e12


def steady_median(history: list[tuple[int, float]], warmup: int = STEADY_AFTER) -> float:
    """Median value of the (step, value) pairs after step `warmup`; of all of them when none are
    later (a run shorter than its warm-up); NaN for no pairs."""
    later = [v for step, v in history if step > warmup]
    values = later or [v for _, v in history]
    return statistics.median(values) if values else float("nan")


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of `step` (forward and backward when it runs both), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _fmt(value: float | None, digits: int) -> str:
    return "unknown" if value is None or value != value else f"{value:.{digits}f}"


def figures_line(
    gpu: str,
    video_tflops: float,
    peak_tflops: float | None,
    loader_clips_per_s: float,
    step_clips_per_s: float,
    encoder_clips_per_s: float,
) -> str:
    """The bench's last line (`key=value`, spaces in the GPU name as underscores)."""
    share = video_tflops / peak_tflops if peak_tflops else None
    headroom = loader_clips_per_s / step_clips_per_s if step_clips_per_s > 0 else None
    return (
        f"gpu={'_'.join(gpu.split())} video_tflops={_fmt(video_tflops, 1)} "
        f"bf16_peak_share={_fmt(share, 3)} loader_clips_per_s={_fmt(loader_clips_per_s, 1)} "
        f"step_clips_per_s={_fmt(step_clips_per_s, 1)} loader_headroom={_fmt(headroom, 2)} "
        f"encoder_clips_per_s={_fmt(encoder_clips_per_s, 1)}"
    )


def run_overrides(shards: str, workdir: Path, steps: int, cpus: int) -> list[str]:
    """Overrides of a paper config for one bench run on one GPU, writing only under `workdir`."""
    return [
        f"data.shards={shards}",
        "data.decode_device=auto",
        "train.num_workers=1",
        "train.use_gpu=true",
        f"train.cpus_per_worker={cpus}",
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        "train.log_every=1",
        "model.sync_bn=true",
        "eval.every=0",
        f"train.storage_path={workdir / 'ray_results'}",
        f"tracking.uri=sqlite:///{workdir / 'mlruns.db'}",
    ]


def bench_shards(phantom: PhantomConfig, workers: int, log=print) -> Path:
    """The phantom cache's shards for `phantom` (those `usvs_dist.phantom.ensure_phantom_shards`
    uses), built on `workers` processes when missing."""
    from usvs_dist.phantom import ensure_phantom_shards

    return ensure_phantom_shards(phantom, log=log, workers=workers)


def _child_env() -> dict[str, str]:
    """This checkout importable; a local Ray and the bench's own MLflow store, not the caller's."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


def _default_sigint() -> None:
    """In the forked child before exec: SIGINT back to its default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_child(
    args: list[str], cwd: Path, log_path: Path, timeout: float, env: dict[str, str] | None = None
) -> int | None:
    """Run `python args` in its own process group (`env` added to its environment), output to
    `log_path`; its exit status, or None when it ran past `timeout` (then its group gets SIGINT,
    so Ray shuts down, and SIGKILL 20 s on)."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env={**_child_env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A shell's background job (nohup, `&`, some CI runners) ignores SIGINT, and an ignored
            # signal stays ignored across exec: the child would never see the interrupt below.
            preexec_fn=_default_sigint,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return None


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def gpu_tests(budget_s: float, workdir: Path, print_fn=print) -> str:
    """Stage 1: `pytest -m gpu` over this checkout's tests; one word of outcome."""
    if not (REPO / "tests").is_dir():
        print_fn("gpu tests: no tests/ folder beside the package (not a checkout); skipped")
        return "absent"
    from usvs_dist.data.backends import torchcodec_unusable

    start = time.perf_counter()
    log_path = workdir / "pytest-gpu.log"
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(REPO / "tests")]
    # With TorchCodec installed its NVDEC tests must run: a skip would pass unverified.
    why = torchcodec_unusable()
    if why is not None:
        print_fn(f"gpu tests: TorchCodec's NVDEC tests skip here: {why}")
    required = {"USVS_TEST_REQUIRE_DECODERS": "decord,torchcodec"} if why is None else {}
    code = _run_child(args, REPO, log_path, budget_s, required)
    seconds = time.perf_counter() - start
    lines = log_path.read_text(errors="replace").splitlines()
    summary = lines[-1] if lines else ""
    outcome = {None: "timed-out", 0: "passed", 5: "none-collected"}.get(code, "failed")
    print_fn(f"gpu tests (pytest -m gpu): {outcome} in {seconds:.0f} s: {summary}")
    if outcome == "failed":
        print_fn(_tail(log_path, 30))
    return outcome


@dataclass(frozen=True)
class EncoderFigures:
    """One forward + backward of the video encoder: its FLOPs and time."""

    name: str
    shape: tuple[int, ...]
    flops: int
    """FLOPs of one forward + backward."""
    seconds: float
    """Seconds of one forward + backward (CUDA events, mean over the timed steps)."""

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s."""
        return achieved_tflops(self.flops, self.seconds)

    @property
    def clips_per_s(self) -> float:
        """Clips per second the encoder alone could train on (batch / step time)."""
        return self.shape[0] / self.seconds


def time_video_encoder(
    cfg: RootConfig, iters: int = ENCODER_ITERS, warmup: int = ENCODER_WARMUP
) -> EncoderFigures:
    """Stage 2: the config's video encoder, forward + backward of one paper-shaped bf16 batch."""
    from usvs_dist.models.encoders import build_encoder

    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    # DeepSpeed's bf16 mode keeps the module's parameters and the inputs in bf16 (no autocast).
    encoder = build_encoder(cfg, "video").to(device=device, dtype=torch.bfloat16).train()
    d = cfg.data
    shape = (d.batch_size, d.channels, d.num_frames, d.frame_size, d.frame_size)
    video_BCTHW = torch.rand(shape, device=device, dtype=torch.bfloat16)

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        encoder(video_BCTHW).float().sum().backward()

    for _ in range(warmup):
        step()
    flops = count_flops(step)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000 / iters  # elapsed_time is in milliseconds
    return EncoderFigures(cfg.model.video, shape, flops, seconds)


def time_loader(
    data_cfg: DataConfig,
    shards: str,
    min_batches: int = LOADER_MIN_BATCHES,
    budget_s: float = LOADER_BUDGET_S,
) -> tuple[float, int]:
    """Stage 3: (clips/s, batches timed) of the loader alone, finishing its batches on the GPU.

    Each epoch is timed from its first batch to its last (the workers' start-up left out), and
    epochs follow until `min_batches` are timed or `budget_s` has passed.
    """
    from usvs_dist.data.pipeline import EpochLoader

    loader = EpochLoader(data_cfg, shards, rank=0, world_size=1, use_gpu=True, audio=True)
    device = torch.device("cuda", torch.cuda.current_device())
    timed, seconds, epoch = 0, 0.0, 0
    deadline = time.perf_counter() + budget_s
    while timed < min_batches and time.perf_counter() < deadline:
        it = iter(loader.epoch(epoch, device=device))
        next(it)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in it:
            timed += 1
        torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        epoch += 1
        del it
    if timed == 0:
        raise ValueError(
            f"the loader yielded one batch per epoch from {shards}: too few train clips for "
            f"data.batch_size={data_cfg.batch_size} x data.loader_workers={data_cfg.loader_workers}"
        )
    return timed * data_cfg.batch_size / seconds, timed


@dataclass(frozen=True)
class RunFigures:
    """A paper config's bench run."""

    recipe: str
    status: str
    """ok, failed, timed-out or skipped."""
    seconds: float = 0.0
    clips_per_s: float = float("nan")
    peak_gpu_mib: float = float("nan")


def train_paper_config(
    recipe: str, shards: str, steps: int, timeout: float, workdir: Path, extra: list[str], print_fn=print
) -> RunFigures:
    """Stage 4, one config: `python -m usvs_dist.train --config configs/<recipe>.yaml` on one GPU."""
    folder = workdir / recipe
    folder.mkdir()
    cpus = max(1, min(8, os.cpu_count() or 1))  # the configs ask 8; Ray waits forever for more than exist
    overrides = run_overrides(shards, folder, steps, cpus)
    args = ["-m", "usvs_dist.train", "--config", str(REPO / "configs" / f"{recipe}.yaml"), *overrides, *extra]
    log_path = folder / "train.log"
    start = time.perf_counter()
    code = _run_child(args, folder, log_path, timeout)
    seconds = time.perf_counter() - start
    if code != 0:
        status = "timed-out" if code is None else "failed"
        print_fn(f"{recipe}: {status} after {seconds:.0f} s; the end of its output:\n{_tail(log_path)}")
        return RunFigures(recipe, status, seconds)
    try:
        clips_per_s, peak_gpu_mib = read_run_figures(
            log_path.read_text(errors="replace"), folder / "mlruns.db"
        )
    except Exception as exc:  # the other configs still run; this one is reported failed
        print_fn(f"{recipe}: trained, but its figures could not be read back: {exc}")
        return RunFigures(recipe, "failed", seconds)
    return RunFigures(recipe, "ok", seconds, clips_per_s, peak_gpu_mib)


def read_run_figures(output: str, db: Path) -> tuple[float, float]:
    """(steady clips/s, peak GPU MiB) of the run whose entry printed `output`, from its MLflow store."""
    from mlflow.tracking import MlflowClient

    found = re.search(r"MLflow run id: (\w+)", output)
    if found is None:
        raise ValueError(f"no 'MLflow run id:' line in the training entry's output (store {db})")
    client = MlflowClient(f"sqlite:///{db}")
    rates = [(m.step, m.value) for m in client.get_metric_history(found.group(1), "clips_per_s")]
    peaks = [m.value for m in client.get_metric_history(found.group(1), "peak_gpu_mib")]
    return steady_median(rates), max(peaks) if peaks else float("nan")


def run(
    shards: str | None,
    overrides: list[str],
    steps: int = 8,
    budget_s: float = 480.0,
    tests: bool = True,
    recipes: tuple[str, ...] = PAPER_RECIPES,
    print_fn=print,
) -> int:
    """Run the stages within `budget_s` (from now), print the tables and the figures line; 0 when
    every stage ran and passed, 1 otherwise, and 0 without CUDA after saying so."""
    if not torch.cuda.is_available():
        print_fn(NO_CUDA)
        return 0
    from usvs_dist.config import load_config
    from usvs_dist.data import backends

    deadline = time.perf_counter() + budget_s
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    peak = bf16_peak_tflops(name)
    print_fn(
        f"GPU {name}: {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
        f"sm_{props.major}{props.minor}, bf16 {'' if torch.cuda.is_bf16_supported() else 'NOT '}supported; "
        + (f"dense bf16 peak {peak:.0f} TFLOP/s (NVIDIA datasheet)" if peak else "bf16 peak unknown")
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="usvs-bench-gpu-") as tmp:
        workdir = Path(tmp)
        if tests:
            ok &= (
                gpu_tests(min(TESTS_BUDGET_S, deadline - time.perf_counter()), workdir, print_fn) == "passed"
            )

        cfg = load_config(REPO / "configs" / "usvs2020.yaml", [*overrides])
        if shards is None:
            phantom = replace(PhantomConfig(cache_dir=cfg.phantom.cache_dir), **BENCH_PHANTOM)
            start = time.perf_counter()
            shards = str(bench_shards(phantom, max(1, (os.cpu_count() or 2) - 1), log=print_fn).resolve())
            print_fn(f"shards: {shards} ({time.perf_counter() - start:.0f} s)")

        enc = time_video_encoder(cfg)
        share = f"{enc.tflops / peak:.1%} of peak" if peak else "peak unknown"
        print_fn(
            f"video encoder {enc.name}, forward + backward in bf16 on [{' x '.join(map(str, enc.shape))}]: "
            f"{enc.flops / 1e9:.1f} GFLOP in {1000 * enc.seconds:.2f} ms = {enc.tflops:.1f} TFLOP/s "
            f"({share}), {enc.clips_per_s:.0f} clips/s"
        )
        torch.cuda.empty_cache()  # the encoder's blocks, before the loader and the runs

        # The loader with each decoder this machine has (TorchCodec: NVDEC); the faster one counts.
        loader_rate = 0.0
        if (why := backends.torchcodec_unusable()) is not None:
            print_fn(f"loader alone with torchcodec: not run, {why}")
        for decoder in backends.usable_decoders():
            data = replace(cfg.data, decoder=decoder)
            choice = backends.resolve_decoder(decoder, data.decode_device, True, 0)
            rate, batches = time_loader(data, shards)
            loader_rate = max(loader_rate, rate)
            print_fn(
                f"loader alone: {data.loader_workers} workers x {data.decode_threads} {decoder} threads, "
                f"decode on {'GPU' if choice.on_gpu else 'CPU'} (data.decode_device={data.decode_device}), "
                f"finishing on the GPU: {rate:.0f} clips/s over {batches} batches of {data.batch_size}"
            )
            torch.cuda.empty_cache()

        results: list[RunFigures] = []
        for k, recipe in enumerate(recipes):
            left = deadline - time.perf_counter()
            if left < MIN_RUN_S:
                results.append(RunFigures(recipe, "skipped"))
                continue
            timeout = left / (len(recipes) - k)
            results.append(train_paper_config(recipe, shards, steps, timeout, workdir, overrides, print_fn))
    print_fn(
        f"paper configs, {steps} steps each on 1 GPU (NCCL, bf16, model.sync_bn, data.decode_device=auto); "
        f"clips/s: median after step {STEADY_AFTER}"
    )
    print_fn(f"{'config':<10}{'status':>10}{'seconds':>9}{'clips/s':>10}{'peak GPU MiB':>14}")
    for r in results:
        print_fn(
            f"{r.recipe:<10}{r.status:>10}{r.seconds:>9.0f}{_fmt(r.clips_per_s, 1):>10}"
            f"{_fmt(r.peak_gpu_mib, 0):>14}"
        )
    ran = [r for r in results if r.status == "ok"]
    ok &= len(ran) == len(results)
    step_rate = max((r.clips_per_s for r in ran if r.clips_per_s == r.clips_per_s), default=float("nan"))
    print_fn(figures_line(name, enc.tflops, peak, loader_rate, step_rate, enc.clips_per_s))
    return 0 if ok else 1
