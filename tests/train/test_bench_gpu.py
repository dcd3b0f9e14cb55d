"""`bench gpu`: without CUDA it says so and exits 0; its arithmetic, peak table, FLOP count and run
overrides are checked here on the CPU. The `gpu`-marked tests (skipped without CUDA) are what the
bench's first stage runs: the paper encoders in bf16, SyncBatchNorm on NCCL, the loader finishing
on the GPU, and the bench's own CUDA timings on tiny inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from usvs_dist.bench.gpu import (
    NO_CUDA,
    PAPER_RECIPES,
    REPO,
    achieved_tflops,
    bench_shards,
    bf16_peak_tflops,
    count_flops,
    figures_line,
    run_overrides,
    steady_median,
)
from usvs_dist.config import load_config
from usvs_dist.dist.collectives import free_port

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bench_gpu_without_cuda_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "usvs_dist.bench", "gpu"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == NO_CUDA


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA A10G", None),  # not on NVIDIA's datasheets
        ("NVIDIA L40", None),
        ("Tesla V100-SXM2-16GB", None),  # no bf16 tensor cores
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_bf16_peak_is_looked_up_by_device_name(name, peak):
    assert bf16_peak_tflops(name) == peak


def test_tflops_and_the_figures_line():
    # R(2+1)D-18-sized numbers: 2.4 TFLOP in 12 ms is 200 TFLOP/s.
    assert achieved_tflops(2.4e12, 0.012) == pytest.approx(200.0)
    line = figures_line("NVIDIA H200", 200.0, 989.0, 900.0, 600.0, 2600.0)
    assert line == (
        "gpu=NVIDIA_H200 video_tflops=200.0 bf16_peak_share=0.202 loader_clips_per_s=900.0 "
        "step_clips_per_s=600.0 loader_headroom=1.50 encoder_clips_per_s=2600.0"
    )
    unknown = figures_line("Some GPU", 10.0, None, 100.0, float("nan"), 50.0)
    assert "bf16_peak_share=unknown" in unknown and "step_clips_per_s=unknown" in unknown
    assert "loader_headroom=unknown" in unknown
    assert all(re.fullmatch(r"[a-z0-9_]+=\S+", kv) for kv in unknown.split())


def test_steady_median_leaves_out_the_warmup_steps():
    history = [(1, 5.0), (2, 50.0), (3, 90.0), (4, 100.0), (5, 120.0), (6, 110.0)]
    assert steady_median(history, warmup=3) == 110.0
    assert steady_median(history[:2], warmup=3) == 27.5  # shorter than the warm-up: all steps
    assert steady_median([], warmup=3) != steady_median([], warmup=3)  # NaN


def test_flop_count_of_a_conv_forward_and_backward_matches_the_formula():
    B, Cin, Cout, T, H, W, k = 2, 3, 4, 4, 8, 8, 3
    conv = nn.Conv3d(Cin, Cout, k, padding=1, bias=False)
    x = torch.rand(B, Cin, T, H, W)
    forward = 2 * B * Cout * T * H * W * Cin * k**3  # a multiply-add is 2 FLOPs
    # The input needs no gradient: backward computes the weight's gradient only, as many FLOPs.
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward
    x.requires_grad_(True)
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_run_overrides_give_a_valid_one_gpu_config(recipe, tmp_path):
    overrides = run_overrides("/data/shards", tmp_path, steps=8, cpus=8)
    cfg = load_config(REPO / "configs" / f"{recipe}.yaml", overrides)
    assert cfg.objective.recipe == recipe
    assert (cfg.train.num_workers, cfg.train.use_gpu, cfg.model.sync_bn) == (1, True, True)
    assert (cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every) == (8, 8, 1)
    assert cfg.data.decode_device == "auto" and cfg.eval.every == 0
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert Path(cfg.train.storage_path).parent == tmp_path
    # The paper's data settings are kept: that is what is measured.
    assert (cfg.data.batch_size, cfg.data.num_frames, cfg.data.frame_size) == (32, 14, 128)


def test_bench_shards_are_the_phantom_cache(tmp_path):
    from usvs_dist.config.schema import PhantomConfig
    from usvs_dist.phantom import ensure_phantom_shards, phantom_dir

    phantom = PhantomConfig(cache_dir=str(tmp_path), scans=2, seconds=4.0, fps=8.0, size=32)
    shards = bench_shards(phantom, workers=2, log=lambda *_: None)
    assert shards == phantom_dir(phantom) / "shards" and (shards / "index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [phantom_dir(phantom).name]  # no temp folder left
    built: list[str] = []
    assert ensure_phantom_shards(phantom, log=built.append) == shards and built == []  # reused


# --- on a CUDA device (`pytest -m gpu`, the bench's first stage) ---------------------------------

PAPER = [
    "data.batch_size=4",
    "model.video=r2plus1d_18",
    "model.audio=cnn14",
    "model.image=resnet18",
    "model.embed_dim=512",
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("modality", ["video", "audio", "image"])
def test_paper_encoder_runs_forward_and_backward_in_bf16(modality):
    from usvs_dist.bench.step import synthetic_batch
    from usvs_dist.models.encoders import build_encoder

    cfg = load_config(REPO / "configs" / "usvs2020.yaml", PAPER)
    encoder = build_encoder(cfg, modality).cuda().to(torch.bfloat16).train()
    x = synthetic_batch(cfg)[modality].cuda().to(torch.bfloat16)
    feat_BF = encoder(x)
    assert feat_BF.shape == (4, encoder.out_features) and feat_BF.dtype == torch.bfloat16
    feat_BF.float().square().mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
@needs_cuda
def test_sync_batchnorm_on_an_nccl_group_of_one_equals_batchnorm():
    import copy

    import torch.distributed as dist

    from usvs_dist.dist.engine import distribute_batchnorm

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU()).cuda()
        synced = distribute_batchnorm(copy.deepcopy(plain), sync_bn=True)
        assert isinstance(synced[1], nn.SyncBatchNorm)
        x = torch.rand(4, 1, 6, 16, 16, device="cuda") * 3 + 1
        y_plain, y_synced = plain(x), synced(x)
        torch.testing.assert_close(y_synced, y_plain)
        torch.testing.assert_close(synced[1].running_mean, plain[1].running_mean)
        y_synced.sum().backward()
        assert torch.isfinite(synced[0].weight.grad).all()
        out = synced.to(torch.bfloat16)(x.to(torch.bfloat16))  # as DeepSpeed's bf16 mode runs it
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@needs_cuda
def test_loader_with_decode_auto_finishes_batches_on_the_gpu(phantom_shards):
    from usvs_dist.data.pipeline import EpochLoader

    cfg = load_config(None, ["data.batch_size=4", "data.loader_workers=1", "data.decode_device=auto"])
    loader = EpochLoader(cfg.data, phantom_shards, rank=0, world_size=1, use_gpu=True)
    batch = next(iter(loader.epoch(0, device="cuda")))
    for key in ("video", "audio", "image"):
        assert batch[key].device.type == "cuda", key
        assert batch[key].is_floating_point() and torch.isfinite(batch[key]).all(), key
    assert batch["video"].shape == (4, 1, cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size)


@pytest.mark.gpu
@needs_cuda
def test_bench_timings_run_on_tiny_inputs(phantom_shards):
    from usvs_dist.bench.gpu import time_loader, time_video_encoder
    from usvs_dist.models.encoders import build_encoder

    cfg = load_config(None, ["data.batch_size=4", "data.num_frames=4", "model.video=tiny3d"])
    figures = time_video_encoder(cfg, iters=3, warmup=1)
    # FLOPs follow from shapes alone: the same count as the fp32 encoder on the CPU.
    encoder = build_encoder(cfg, "video")
    x = torch.rand(figures.shape)
    assert figures.flops == count_flops(lambda: encoder(x).sum().backward()) > 0
    assert figures.seconds > 0 and figures.tflops > 0
    rate, batches = time_loader(cfg.data, str(phantom_shards), min_batches=2, budget_s=60)
    assert rate > 0 and batches >= 2


def test_run_figures_are_read_back_from_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from usvs_dist.bench.gpu import read_run_figures

    db = tmp_path / "mlruns.db"
    client = MlflowClient(f"sqlite:///{db}")
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    for step, (rate, peak) in enumerate(
        [(3.0, 900), (40.0, 1800), (95.0, 2000), (100.0, 2000), (104.0, 2100)]
    ):
        client.log_metric(run_id, "clips_per_s", rate, step=step + 1)
        client.log_metric(run_id, "peak_gpu_mib", peak, step=step + 1)
    output = f"...\nMLflow run id: {run_id}\ncheckpoint: /x\n"
    assert read_run_figures(output, db) == (102.0, 2100)  # median of steps 4-5; the largest peak
    with pytest.raises(ValueError, match="MLflow run id"):
        read_run_figures("the entry failed early", db)


def test_a_child_past_its_time_is_interrupted(tmp_path):
    from usvs_dist.bench.gpu import _run_child

    log = tmp_path / "out.log"
    assert _run_child(["-c", "print('hi')"], tmp_path, log, timeout=60) == 0 and log.read_text() == "hi\n"
    assert _run_child(["-c", "import sys; sys.exit(3)"], tmp_path, log, timeout=60) == 3
    # 8 s: the child's interpreter must be inside its try before the signal, even on a busy machine.
    slow = (
        "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    print('interrupted')\n"
    )
    assert _run_child(["-c", slow], tmp_path, log, timeout=8) is None
    assert log.read_text() == "ready\ninterrupted\n"  # SIGINT first, so Ray in the child can shut down


def _fake_cuda(monkeypatch):
    """torch.cuda as an H200 would answer the bench's questions (nothing runs on it)."""
    from types import SimpleNamespace

    import usvs_dist.data.backends as backends

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    props = SimpleNamespace(total_memory=141 * 2**30, multi_processor_count=132, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: props)
    # Both decoders "usable": the loader stage runs once per decoder.
    monkeypatch.setattr(backends, "torchcodec_unusable", lambda: None)


@pytest.mark.parametrize("budget, ran", [(600.0, 4), (10.0, 0)])
def test_stages_run_in_order_within_the_budget_and_end_with_the_figures_line(monkeypatch, budget, ran):
    import usvs_dist.bench.gpu as bench

    _fake_cuda(monkeypatch)
    stages: list[str] = []
    monkeypatch.setattr(bench, "gpu_tests", lambda *a: stages.append("tests") or "passed")
    shape = (32, 1, 14, 128, 128)
    monkeypatch.setattr(
        bench,
        "time_video_encoder",
        lambda cfg: stages.append("encoder") or bench.EncoderFigures("r", shape, 2e12, 0.01),
    )
    monkeypatch.setattr(bench, "time_loader", lambda *a: stages.append("loader") or (900.0, 24))
    rates = dict(zip(PAPER_RECIPES, (300.0, 250.0, 600.0, 450.0), strict=True))

    def train(recipe, shards, steps, timeout, workdir, extra, print_fn):
        stages.append(recipe)
        assert shards == "/shards" and steps == 8 and extra == ["data.loader_workers=2"]
        return bench.RunFigures(recipe, "ok", 50.0, rates[recipe], 20000.0)

    monkeypatch.setattr(bench, "train_paper_config", train)
    lines: list[str] = []
    code = bench.run("/shards", ["data.loader_workers=2"], 8, budget, True, print_fn=lines.append)
    assert stages == ["tests", "encoder", "loader", "loader", *PAPER_RECIPES[:ran]]
    assert lines[0].startswith("GPU NVIDIA H200: 141.0 GiB, 132 SMs, sm_90") and "989 TFLOP/s" in lines[0]
    assert any("200.0 TFLOP/s (20.2% of peak), 3200 clips/s" in line for line in lines)
    rows = [line.split() for line in lines if line.split() and line.split()[0] in PAPER_RECIPES]
    assert [r[1] for r in rows] == ["ok"] * ran + ["skipped"] * (4 - ran)
    if ran:
        assert code == 0
        assert lines[-1] == (
            "gpu=NVIDIA_H200 video_tflops=200.0 bf16_peak_share=0.202 loader_clips_per_s=900.0 "
            "step_clips_per_s=600.0 loader_headroom=1.50 encoder_clips_per_s=3200.0"
        )
    else:
        assert code == 1 and "step_clips_per_s=unknown loader_headroom=unknown" in lines[-1]
