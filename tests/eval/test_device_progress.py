"""Where evaluation runs (`--device`, eval.device), its progress lines (`--quiet`) and each task's
wall time: the entry on a tiny checkpoint and the phantom shards, and the pieces alone. The
`gpu`-marked tests (skipped without CUDA) check the CUDA paths: bf16 autocast, features back on
the CPU, probes and fine-tuning on the device."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.eval.fakes import RecordingTracker
from tests.eval.test_protocols import Flatten, _planes_data
from usvs_dist.config import EvalConfig, load_config
from usvs_dist.config.load import to_yaml
from usvs_dist.eval import progress as progress_module
from usvs_dist.eval import report
from usvs_dist.eval.device import autocast, module_device, resolve_device
from usvs_dist.eval.encoders import RUN_FILE
from usvs_dist.eval.probe import features, plane_detection
from usvs_dist.evaluate import main as evaluate_main
from usvs_dist.models import build_model
from usvs_dist.models.pretrain import encoder_state_dicts

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = ["model.width=4", "model.embed_dim=8", "data.frame_size=32"]
# The test phantom has no test split (3 patients): these tests are about where evaluation runs.
FAST = [
    "eval.plane_splits=[train]",
    "eval.folds=2",
    "eval.finetune_steps=2",
    "eval.probe_iters=5",
    "eval.saliency_epochs=1",
]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A training checkpoint folder of a tiny video+audio model (encoders.pt, config.yaml)."""
    cfg = load_config(None, TINY)
    torch.manual_seed(1)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save(encoder_state_dicts(build_model(cfg, {"video", "audio"})), folder / "encoders.pt")
    (folder / "config.yaml").write_text(to_yaml(cfg))
    return folder


def _metrics_table(report_md: str) -> str:
    """The report's metric rows (what a device must not change), without the wall times."""
    return report_md.split("Gain:")[0]


# --- the entry on the phantom shards ----------------------------------------------------------


def test_cpu_equals_the_default_and_progress_is_plain_lines_with_wall_times(
    checkpoint, phantom_shards, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto is the CPU, on any machine
    (checkpoint / RUN_FILE).write_text(json.dumps({"tracking_uri": "sqlite:///x.db", "mlflow_run_id": "r"}))
    monkeypatch.setattr("usvs_dist.tracking.MlflowTracker", RecordingTracker)
    base = ["--checkpoint", str(checkpoint), "--shards", str(phantom_shards), "--task", "planes"]

    assert evaluate_main([*base, "--task", "retrieval", "--out", "auto", *FAST]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    for protocol in ("linear", "finetune"):
        assert f"planes video {protocol}: fold 1/2 (" in err and f"planes video {protocol}: fold 2/2 (" in err
    assert "planes, random encoders: done in" in err and "retrieval, pretrained encoders: done in" in err
    default_report = (tmp_path / "auto" / "report.md").read_text()
    for task in ("planes", "retrieval"):
        row = next(line for line in default_report.splitlines() if line.startswith(f"| {task} |"))
        assert row.count(" s |") == 2  # pretrained and random wall times
    assert RecordingTracker.logged["downstream_time/planes_s"] > 0
    assert "downstream_time/retrieval_s" in RecordingTracker.logged
    assert "downstream_time/saliency_s" not in RecordingTracker.logged  # not asked for
    assert (Path("auto") / "report.md", "downstream") in RecordingTracker.artifacts
    assert RecordingTracker.closed

    assert evaluate_main([*base, "--task", "retrieval", "--out", "cpu", "--device", "cpu", *FAST]) == 0
    capsys.readouterr()
    assert _metrics_table((tmp_path / "cpu" / "report.md").read_text()) == _metrics_table(default_report)
    assert "planes/video/finetune/f1" in default_report and "retrieval/v2a_r1" in default_report


def test_quiet_prints_no_progress(checkpoint, phantom_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", str(checkpoint), "--shards", str(phantom_shards), "--task", "planes"]
    assert evaluate_main([*args, "--protocol", "linear", "--quiet", *FAST]) == 0
    out, err = capsys.readouterr()
    assert "fold" not in err and "encoders" not in err and "| planes |" in out
    assert not progress_module._enabled  # --quiet or not, the entry leaves the default as it was


def test_cuda_without_cuda_exits_2_naming_where_it_was_asked(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert evaluate_main(["--checkpoint", str(checkpoint), "--device", "cuda"]) == 2
    assert "--device=cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(checkpoint), "eval.device=cuda"]) == 2
    assert "eval.device=cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(checkpoint), "eval.device=tpu"]) == 2
    assert "eval.device='tpu' is invalid: expected one of auto, cpu, cuda" in capsys.readouterr().err


# --- the pieces -------------------------------------------------------------------------------


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="eval.device=cuda: torch sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device='gpu': expected one of auto, cpu, cuda"):
        resolve_device("gpu", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert EvalConfig().device == "auto"


def test_autocast_changes_nothing_on_the_cpu():
    layer, x = nn.Linear(4, 3), torch.randn(5, 4)
    with autocast("cpu"):
        inside = layer(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, layer(x))
    assert module_device(layer) == torch.device("cpu") and module_device(nn.ReLU()) == torch.device("cpu")


def test_progress_lines_off_by_default_plain_without_a_terminal_a_bar_on_one(monkeypatch, capsys):
    with progress_module.progress(3, "planes video linear") as advance:
        advance()
    progress_module.note("not shown")
    assert capsys.readouterr().err == ""

    with progress_module.shown(True), progress_module.progress(3, "planes video linear") as advance:
        for _ in range(3):
            advance()
        progress_module.note("planes, pretrained encoders: done")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        *(f"planes video linear: fold {k}/3" for k in (1, 2, 3)),
        "planes, pretrained encoders: done",
    ]
    assert not progress_module._enabled  # restored

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress_module.progress(2, "planes video finetune", enabled=True) as advance:
        advance()
        advance()
    assert "\r" in terminal.getvalue() and "2/2" in terminal.getvalue()  # tqdm redraws in place


def test_report_has_a_wall_time_row_per_task():
    text = report.markdown(
        {"a/x": 1.0},
        {"a/x": 0.5},
        "run",
        {},
        seconds={"planes": {"pretrained": 12.34, "random": 3.0}, "retrieval": {"pretrained": 0.5}},
    )
    assert "| planes | 12.3 s | 3.0 s |" in text and "| retrieval | 0.5 s | — |" in text
    assert "wall time" not in report.markdown({"a/x": 1.0}, {"a/x": 0.5}, "run", {})
    with_init = report.markdown(
        {"a/x": 1.0},
        {"a/x": 0.5},
        "run",
        {},
        {"a/x": 0.7},
        init_label="r18 init",
        seconds={"planes": {"pretrained": 2.0, "random": 1.0, "init": 1.5}},
    )
    assert "wall time, r18 init |" in with_init and "| planes | 2.0 s | 1.0 s | 1.5 s |" in with_init


def test_plane_detection_on_an_explicit_cpu_device_equals_the_default():
    x, y, scans = _planes_data()
    cfg = EvalConfig(folds=3, finetune_steps=20, batch_size=8)
    default = plane_detection(Flatten(6), x, y, scans, cfg, classes=4)
    cpu = plane_detection(Flatten(6), x, y, scans, cfg, classes=4, device="cpu")
    for protocol in ("linear", "finetune"):
        assert torch.equal(default[protocol].pop("confusion"), cpu[protocol].pop("confusion"))
        assert default[protocol] == cpu[protocol]


# --- on a CUDA device (`pytest -m gpu`) ---------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_autocast_is_bf16_on_cuda_and_features_come_back_float32_on_the_cpu():
    layer = nn.Linear(6, 3).cuda()
    with autocast("cuda"):
        assert layer(torch.randn(2, 6, device="cuda")).dtype == torch.bfloat16
    encoder = Flatten(6)
    x = torch.randn(20, 6)
    on_cpu = features(encoder, x, batch_size=8)
    on_gpu = features(encoder.cuda(), x, batch_size=8)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-2, atol=1e-2)  # bf16 rounding


@pytest.mark.gpu
@needs_cuda
def test_plane_detection_probes_and_fine_tunes_on_cuda():
    x, y, scans = _planes_data()
    cfg = EvalConfig(folds=3, finetune_steps=100, batch_size=8)
    result = plane_detection(Flatten(6).cuda(), x, y, scans, cfg, classes=4)
    assert result["linear"]["f1"] == 1.0 and result["finetune"]["f1"] > 0.9
    assert result["linear"]["confusion"].device.type == "cpu"


@pytest.mark.gpu
@needs_cuda
def test_the_entry_runs_every_task_on_cuda(checkpoint, phantom_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", str(checkpoint), "--shards", str(phantom_shards), "--device", "cuda"]
    assert evaluate_main([*args, "--no-log", *FAST]) == 0
    text = (tmp_path / "eval_out" / "report.md").read_text()
    assert "on cuda: started" in capsys.readouterr().err
    assert all(f"| {task} |" in text for task in ("planes", "saliency", "retrieval"))
    assert "nan" not in _metrics_table(text)


@pytest.mark.gpu
@needs_cuda
def test_periodic_evaluation_of_a_cuda_model_with_eval_device_cpu_copies_its_weights(monkeypatch):
    from usvs_dist.eval import tasks
    from usvs_dist.train.periodic_eval import PeriodicEval

    def no_clips(self, cfg, location, max_clips):
        raise ValueError("no clips in this test")

    monkeypatch.setattr(tasks.Clips, "load", no_clips)
    cfg = load_config(None, [*TINY, "eval.device=cpu"])
    model = build_model(cfg, {"video", "audio"}).cuda()
    copy = PeriodicEval(cfg, "nowhere")._encoders(model)
    assert copy.device.type == "cpu"
    for name, p in copy.encoders["video"].state_dict().items():
        assert torch.equal(p, model.encoders["video"].state_dict()[name].cpu())
