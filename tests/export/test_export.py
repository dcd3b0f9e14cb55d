"""Exported encoders: safetensors round trip, preprocessing.json, torchvision's strict load, MLflow model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import usvs_dist
from usvs_dist.config import load_config, to_yaml
from usvs_dist.data.decode import BatchFinisher
from usvs_dist.eval.encoders import build_encoders
from usvs_dist.export.__main__ import main as export_main
from usvs_dist.models import build_encoder
from usvs_dist.models.heads import ProjectionHead

TINY = ["model.video=tiny3d", "model.audio=tiny2d", "model.image=tiny_resnet", "model.width=4"]
PAPER = ["model.video=r2plus1d_18", "model.image=resnet18", "model.audio=tiny2d"]


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Non-default BatchNorm statistics, so a lost buffer changes outputs (eval mode reads them)."""
    for name, buf in module.named_buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + (0.5 if name.endswith("running_var") else 0.0))
    return module.eval()


def _checkpoint(folder: Path, overrides: list[str], heads: bool = True, step: int = 7):
    """A checkpoint folder as training writes it (encoders.pt, config.yaml, train_state.json)."""
    cfg = load_config(None, [f"phantom.cache_dir={folder / 'cache'}", *overrides])
    torch.manual_seed(0)
    state = {}
    for m in ("video", "audio", "image"):
        encoder = _randomise(build_encoder(cfg, m))
        state[f"{m}_encoder"] = encoder.state_dict()
        if heads and m != "image":
            state[f"{m}_head"] = _randomise(
                ProjectionHead(encoder.out_features, cfg.model.embed_dim)
            ).state_dict()
    ckpt = folder / "checkpoint"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / "encoders.pt")
    (ckpt / "config.yaml").write_text(to_yaml(cfg))
    (ckpt / "train_state.json").write_text(json.dumps({"step": step}))
    return cfg, build_encoders(cfg, state, "test"), ckpt


def _inputs(cfg, channels: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    C, T, S = channels or cfg.data.channels, cfg.data.num_frames, cfg.data.frame_size
    return {
        "video": torch.rand(2, C, T, S, S),
        "image": torch.rand(2, C, S, S),
        "audio": torch.randn(2, 1, cfg.data.n_mels, 48),
    }


def test_export_round_trip_gives_the_original_outputs(tmp_path):
    cfg, enc, ckpt = _checkpoint(tmp_path, TINY)
    out = tmp_path / "export"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "audio_encoder.safetensors",
            "audio_head.safetensors",
            "export.json",
            "image_encoder.safetensors",
            "model_card.md",
            "preprocessing.json",
            "video_encoder.safetensors",
            "video_head.safetensors",
        ]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temp left
    x = _inputs(cfg)
    for m in ("video", "audio", "image"):
        for source in (out, ckpt):
            module, prep = usvs_dist.load_encoder(source, m)
            assert not module.training and prep["modality"] == m
            with torch.no_grad():
                torch.testing.assert_close(module(x[m]), enc.encoders[m](x[m]), rtol=0, atol=0)
    head = load_file(out / "video_head.safetensors")
    assert all(torch.equal(v, enc.heads["video"].state_dict()[k]) for k, v in head.items())
    card = (out / "model_card.md").read_text()
    assert "usvs2020" in card and "7 optimizer steps" in card and "Limitations" in card
    with pytest.raises(ValueError, match="no gaze encoder"):
        usvs_dist.load_encoder(out, "gaze")
    # A second export onto the same folder needs --overwrite, and leaves the first intact.
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out), "--modality", "video"]) == 2
    assert (out / "audio_encoder.safetensors").is_file()
    assert (
        export_main(["--checkpoint", str(ckpt), "--out", str(out), "--modality", "video", "--overwrite"]) == 0
    )
    assert not (out / "audio_encoder.safetensors").exists()


def test_preprocessing_json_states_what_the_batch_finisher_does(tmp_path):
    cfg, _, ckpt = _checkpoint(
        tmp_path, [*TINY, "data.frame_size=32", "data.num_frames=4", "data.channels=3"]
    )
    out = tmp_path / "export"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    prep = json.loads((out / "preprocessing.json").read_text())
    video, audio, image = prep["video"], prep["audio"], prep["image"]
    assert video["shape"] == [None, 3, 4, 32, 32] and image["shape"] == [None, 3, 32, 32]
    assert video["frames"] == 4 and video["frame_size"] == 32 and video["channels"] == 3
    assert video["clip_seconds"] == cfg.phantom.clip_seconds and video["stored_fps"] == cfg.phantom.fps
    assert video["normalisation"]["mean"] is None and video["normalisation"]["std"] is None
    assert video["scaling"].startswith("uint8 / 255")
    mel = audio["mel"]
    assert {k: mel[k] for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")} == {
        "sample_rate": cfg.data.sample_rate,
        "n_fft": cfg.data.n_fft,
        "hop_length": cfg.data.hop_length,
        "n_mels": cfg.data.n_mels,
        "f_min": cfg.data.f_min,
        "f_max": cfg.data.f_max,
    }
    assert audio["samples"] == round(cfg.phantom.clip_seconds * cfg.data.sample_rate)
    # The claim checked against the loader's own last stage: unaugmented frames at the stored size
    # come out as uint8 / 255, grey repeated into the 3 channels, no mean/std.
    frames = torch.randint(0, 256, (2, 5, 32, 32), dtype=torch.uint8)
    batch = BatchFinisher(cfg.data)(
        {"frames": frames, "crop": torch.tensor([[0, 0, 32, 32, 0]] * 2), "intensity": torch.ones(2, 2)}
    )
    expected = frames[:, :4].float() / 255
    torch.testing.assert_close(batch["video"], expected.unsqueeze(1).expand(2, 3, 4, 32, 32))
    # No path or identifier of the run in any file.
    for file in out.iterdir():
        text = file.read_bytes().decode("utf-8", "replace") if file.suffix != ".safetensors" else ""
        assert str(tmp_path) not in text and "cache" not in text


def test_torchvision_format_loads_strictly_into_torchvision_and_matches_the_grey_encoder(tmp_path):
    cfg, enc, ckpt = _checkpoint(tmp_path, [*PAPER, "data.channels=1"], heads=False)
    out = tmp_path / "tv"
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--format", "torchvision"]
    assert export_main([*argv, "--modality", "video", "--modality", "image"]) == 0
    x = _inputs(cfg, channels=1)
    for m, tv in (
        ("video", torchvision.models.video.r2plus1d_18()),
        ("image", torchvision.models.resnet18()),
    ):
        state = load_file(out / f"{m}_encoder.safetensors")
        assert not state["fc.weight"].any() and not state["fc.bias"].any()  # zero, untrained
        tv.load_state_dict(state, strict=True)
        tv.fc = torch.nn.Identity()
        tv.eval()
        rgb = x[m].expand(-1, 3, *x[m].shape[2:])
        with torch.no_grad():
            ours = enc.encoders[m](x[m])
            torch.testing.assert_close(tv(rgb), ours, rtol=0, atol=1e-5)
            loaded, prep = usvs_dist.load_encoder(out, m)
            torch.testing.assert_close(loaded(rgb), ours, rtol=0, atol=1e-5)
        assert prep["channels"] == 3 and prep["shape"][1] == 3
    assert "untrained" in (out / "model_card.md").read_text()


def test_torchvision_format_of_a_tiny_encoder_is_an_error_naming_it(tmp_path, capsys):
    _, _, ckpt = _checkpoint(tmp_path, TINY)
    out = tmp_path / "tv"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out), "--format", "torchvision"]) == 2
    assert "model.video=tiny3d is not a torchvision architecture" in capsys.readouterr().err
    assert not out.exists()
    assert export_main(["--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no encoders.pt there" in capsys.readouterr().err


def test_end_of_training_logs_and_registers_the_video_encoder_as_an_mlflow_model(tmp_path, monkeypatch):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from usvs_dist.tracking import MlflowTracker, open_run
    from usvs_dist.train.model_log import log_trained_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg, enc, ckpt = _checkpoint(tmp_path, [*TINY, "tracking.register_as=usvs-video"])
    run_id = open_run(uri, "export-test", "run", {})
    model_uri = log_trained_model(cfg, ckpt, uri, run_id)
    assert model_uri is not None
    x = _inputs(cfg)["video"]
    version = MlflowClient(uri).get_registered_model("usvs-video").latest_versions[0].version
    registered = f"models:/usvs-video/{version}"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging put the process-wide URI back
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what load_model reads
    for where in (model_uri, registered):
        model = mlflow.pytorch.load_model(where)
        with torch.no_grad():
            torch.testing.assert_close(model(x), enc.encoders["video"](x), rtol=0, atol=0)
    info = mlflow.models.get_model_info(model_uri)
    # The run's own artifacts (as training logs them) load by run id, with or without runs:/.
    tracker = MlflowTracker(uri, run_id)
    tracker.log_text(to_yaml(cfg), "config/resolved.yaml")
    tracker.log_artifact(ckpt / "encoders.pt", "encoders")
    for source in (f"runs:/{run_id}", run_id):
        module, prep = usvs_dist.load_encoder(source, "video")  # MLFLOW_TRACKING_URI: the store
        with torch.no_grad():
            torch.testing.assert_close(module(x), enc.encoders["video"](x), rtol=0, atol=0)
        assert prep["shape"] == [None, 1, 8, 64, 64]
    assert export_main(["--run", run_id, "--out", str(tmp_path / "from_run")]) == 0
    assert (tmp_path / "from_run" / "audio_encoder.safetensors").is_file()
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 64, 64)
    assert info.metadata["modality"] == "video"
    # Without register_as nothing more is registered; a broken store is a warning, not an error.
    cfg2, _, _ = _checkpoint(tmp_path / "b", TINY)
    assert log_trained_model(cfg2, ckpt, uri, run_id) is not None
    assert len(MlflowClient(uri).search_model_versions("name='usvs-video'")) == 1
    assert log_trained_model(cfg2, tmp_path / "nowhere", uri, run_id) is None


def test_import_usvs_dist_stays_light_and_load_encoder_is_lazy():
    code = (
        "import sys, usvs_dist; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert callable(usvs_dist.load_encoder) and 'torch' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
