"""`python -m usvs_dist.train --help | --print-config | --dry-run | --quiet`: before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.train.runner import entry_env
from usvs_dist.config import flatten, load_config, to_dict
from usvs_dist.train.__main__ import main, parser


def test_help_lists_every_config_key_from_the_schema():
    text = parser().format_help()
    for key in flatten(load_config()):
        assert f"  {key} (" in text, key
    assert "--print-config" in text and "--dry-run" in text and "--quiet" in text
    assert "train.log_every (int, default 1)\n      Log metrics every this many steps" in text


def test_print_config_prints_the_resolved_yaml_and_exits_0(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 7}\n")
    assert main(["--config", str(path), "--print-config", "optim.lr=0.01", "--quiet"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(load_config(path, ["optim.lr=0.01", "train.console=false"]))
    assert printed == expected and printed["train"]["steps"] == 7 and printed["train"]["console"] is False


def test_print_config_shows_environment_values_as_their_expression(capsys, monkeypatch):
    monkeypatch.setenv("USVS_TEST_URI", "sqlite:///secret.db")
    assert main(["--print-config", "tracking.uri=${oc.env:USVS_TEST_URI}"]) == 0
    out = capsys.readouterr().out
    assert "secret" not in out and "${oc.env:USVS_TEST_URI}" in out


def test_a_bad_key_exits_2_for_print_config_and_dry_run(capsys):
    assert main(["--print-config", "train.stpes=3"]) == 2
    assert main(["--dry-run", "model.video=nosuch"]) == 2
    assert "model.video" in capsys.readouterr().err


def test_dry_run_on_an_empty_shards_key_does_not_build_the_phantom(capsys, tmp_path):
    assert main(["--dry-run", f"phantom.cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"phantom: would be built at {tmp_path}/phantom-" in out
    assert list(tmp_path.iterdir()) == []  # nothing synthesised, nothing cached


def test_dry_run_checks_the_shards_and_epoch_plan_without_ray_or_deepspeed(phantom_shards, tmp_path):
    """In a fresh interpreter: the summary names the plan, and Ray and DeepSpeed stay unimported."""
    code = (
        "import sys; from usvs_dist.train.__main__ import main; "
        f"rc = main(['--dry-run', 'data.shards={phantom_shards}', 'data.batch_size=2', "
        "'train.run_name=dry']); "
        "print('loaded:', sorted(m for m in ('ray', 'deepspeed') if m in sys.modules), 'rc:', rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded: [] rc: 0" in proc.stdout
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("dry run: "))
    assert "batches per rank per epoch" in summary and f"shards {phantom_shards}" in summary
    assert "it would start from step 0" in summary and "Ray and DeepSpeed were not started" in summary
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlruns.db").exists()


def test_dry_run_fails_on_a_missing_shard_index(capsys, tmp_path):
    assert main(["--dry-run", f"data.shards={tmp_path}"]) == 2
    assert "index.json" in capsys.readouterr().err
