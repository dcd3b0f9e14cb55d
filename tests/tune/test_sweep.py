"""Sweeps: bad sweep files fail before any trial; a 3-trial sweep nests its runs in MLflow, ASHA
stops the trials it should, --resume reruns nothing, and compare prints the table."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.train.runner import TINY, entry_env
from usvs_dist.config import ConfigError
from usvs_dist.tune.space import AshaConfig, ParamSpec, SweepConfig, load_sweep


def _base(shards) -> dict:
    tree: dict = {}
    for item in [f"data.shards={shards}", *TINY]:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = yaml.safe_load(value)
    return tree


def _write(path, sweep: dict, base: dict):
    path.write_text(yaml.safe_dump({"sweep": sweep, "base": base}))
    return path


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"objective.tau": {"type": "uniform", "low": 0.1, "high": 0.2}},
            "objective.tau is not a config key",
        ),
        (
            {"objective.temperature": {"type": "uniform", "low": 0.2, "high": 0.2}},
            r"the range \[0.2, 0.2\] is empty",
        ),
        ({"objective.temperature": {"type": "choice", "values": []}}, "needs a non-empty list"),
        (
            {"objective.pi": {"type": "uniform", "low": 0.1, "high": 0.9}},
            "recipe 'usvs2020' does not use objective.pi",
        ),
        ({"objective.margin": {"type": "choice", "values": [0.1]}}, "does not use objective.margin"),
        # Values a trial could draw that the config refuses: found before any trial starts.
        (
            {"objective.temperature": {"type": "uniform", "low": 0.05, "high": 1.5}},
            r"sweep.space.objective.temperature: a trial could draw objective.temperature=1.5: "
            r"config key objective.temperature=1.5 is invalid: expected a float in \(0, 1\]",
        ),
        (
            {"objective.self_paced.schedule": {"type": "choice", "values": ["linear", "cosin"]}},
            "a trial could draw objective.self_paced.schedule='cosin': .*expected one of linear, cosine",
        ),
    ],
)
def test_bad_search_spaces_are_refused_naming_the_parameter(space, message, tmp_path):
    path = _write(tmp_path / "s.yaml", {"space": space}, {})
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


TEMPERATURE = {"objective.temperature": {"type": "uniform", "low": 0.1, "high": 0.2}}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"search": "bayes", "space": TEMPERATURE},
            "config key sweep.search='bayes' is invalid: expected one of grid, random, optuna",
        ),
        (
            {"mode": "up", "space": TEMPERATURE},
            "config key sweep.mode='up' is invalid: expected one of min, max",
        ),
        ({"num_samples": 0, "space": TEMPERATURE}, "config key sweep.num_samples=0 is invalid"),
        (
            {"asha": {"grace_period": 0}, "space": TEMPERATURE},
            "config key sweep.asha.grace_period=0 is invalid",
        ),
        ({"asha": {"patience": 3}, "space": TEMPERATURE}, "unknown config key 'sweep.asha.patience'"),
        ({"serach": "grid", "space": TEMPERATURE}, "unknown config key 'sweep.serach'"),
        (
            {"space": {"objective.temperature": {"type": "normal", "low": 0.1, "high": 0.2}}},
            "sweep.space.objective.temperature.type='normal' is invalid: expected one of loguniform",
        ),
        (
            {"space": {"objective.temperature": {"type": "grid", "values": [0.1, 0.2]}}},
            "config key sweep.search='random' is invalid: expected grid",
        ),
        ({"metric": "eval/retrieval/v2a_r1", "space": TEMPERATURE}, "base.eval.every > 0"),
        ({"space": {}}, "config key sweep.space={} is invalid"),
    ],
)
def test_the_sweep_section_is_a_typed_config_refused_naming_the_key(sweep, message, tmp_path):
    path = _write(tmp_path / "s.yaml", sweep, {})
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def _typo(name: str) -> str:
    """`name` with two neighbouring letters swapped (num_samples -> num_smaples), or one left out
    where those two are the same."""
    k = len(name) // 2
    swapped = name[: k - 1] + name[k] + name[k - 1] + name[k + 1 :]
    return swapped if swapped != name else name[:k] + name[k + 1 :]


@pytest.mark.parametrize(
    ("section", "field"),
    [("sweep", f.name) for f in dataclasses.fields(SweepConfig)]
    + [("sweep.asha", f.name) for f in dataclasses.fields(AshaConfig)]
    + [("sweep.space.objective.temperature", f.name) for f in dataclasses.fields(ParamSpec)],
)
def test_a_misspelt_sweep_key_is_refused_naming_the_nearest_one(section, field, tmp_path):
    typo = _typo(field)
    assert typo != field
    sweep: dict = {"space": {"objective.temperature": {"type": "uniform", "low": 0.1, "high": 0.2}}}
    if section == "sweep":
        sweep[typo] = sweep.pop(field, None) or 1
    elif section == "sweep.asha":
        sweep["asha"] = {typo: 2}
    else:
        spec = sweep["space"]["objective.temperature"]
        spec[typo] = spec.pop(field, None)
    path = _write(tmp_path / "s.yaml", sweep, {})
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value) == (
        f"{path}: unknown config key '{section}.{typo}': did you mean {section}.{field}?"
    )


def test_a_misspelt_top_level_key_of_a_sweep_file_names_the_nearest_one(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"space": TEMPERATURE}, "bsae": {}}))
    with pytest.raises(ConfigError, match="unknown config key 'bsae': did you mean base?"):
        load_sweep(path)


def test_a_valid_sweep_section_is_typed(tmp_path):
    sweep = {"asha": {"grace_period": 3}, "space": TEMPERATURE}
    loaded = load_sweep(_write(tmp_path / "s.yaml", sweep, {}))
    assert loaded.name == "s" and loaded.search == "random" and loaded.asha.grace_period == 3
    assert loaded.asha.reduction_factor == 2.0 and loaded.space["objective.temperature"].high == 0.2


def test_a_bad_sweep_exits_2_before_any_trial(tmp_path):
    path = _write(
        tmp_path / "s.yaml", {"space": {"objective.pi": {"type": "uniform", "low": 0, "high": 1}}}, {}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "usvs_dist.tune", "--config", str(path)],
        cwd=tmp_path,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "does not use objective.pi" in proc.stderr


def _tune(path, cwd, *extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "usvs_dist.tune",
            "--config",
            str(path),
            "--storage",
            str(cwd / "tune"),
            *extra,
        ],
        cwd=cwd,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_three_trial_sweep_nests_runs_stops_early_resumes_and_compares(phantom_shards, tmp_path):
    base = _base(phantom_shards)
    base["train"] = {
        "num_workers": 1,
        "steps": 4,
        "checkpoint_every": 4,
        "storage_path": str(tmp_path / "runs"),
    }
    base["eval"] = {"every": 2, "subset": 8}
    base["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "system_metrics": False}
    # Constructed for ASHA: at tau = 1 the InfoNCE loss is near log N, at tau = 0.03 random
    # embeddings give a far larger one, so the two later trials lose at the first rung (step 2).
    sweep = {
        "name": "sweep-test",
        "search": "grid",
        "metric": "loss",
        "mode": "min",
        "max_concurrent_trials": 1,
        "asha": {"grace_period": 2, "reduction_factor": 2},
        "space": {"objective.temperature": {"type": "grid", "values": [1.0, 0.03, 0.031]}},
    }
    path = _write(tmp_path / "sweep.yaml", sweep, base)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")

    # Interrupt the sweep (Ctrl-C) when its third trial starts (the first has finished, ASHA has
    # judged the second), then --resume it: done trials must not run again.
    first = subprocess.Popen(
        [sys.executable, "-m", "usvs_dist.tune", "--config", str(path), "--storage", str(tmp_path / "tune")],
        cwd=tmp_path,
        env=entry_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    trials: list = []
    while time.monotonic() < deadline and first.poll() is None and len(trials) < 3:
        time.sleep(1)
        exp = client.get_experiment_by_name("usvs_dist")
        if exp is not None:
            trials = client.search_runs([exp.experiment_id], "tags.`usvs.sweep` = 'sweep-test'")
            trials = [r for r in trials if "usvs.trial" in r.data.tags]
    assert len(trials) == 3, "the third trial did not start before the deadline"
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=300)
    before = {
        r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        for r in sorted(trials, key=lambda r: r.data.tags["usvs.trial"])[:2]
    }
    out = _tune(path, tmp_path, "--resume").stdout

    exp = client.get_experiment_by_name("usvs_dist")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "sweep-test")
    assert parent.info.run_id in out and parent.data.params["search"] == "grid"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(float(c.data.params["objective.temperature"]) for c in children) == [0.03, 0.031, 1.0]
    history = {
        c.info.run_id: [m.step for m in client.get_metric_history(c.info.run_id, "loss")] for c in children
    }
    for run_id, steps in before.items():
        assert history[run_id] == steps  # done before the interruption: not run again
    # ASHA stopped at least one of the small-tau trials at the first rung (Tune's last report
    # of it is step 2); its MLflow run is tagged so.
    best = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "best_trial.json", str(tmp_path))).read_text()
    )
    last = {t["params"]["objective.temperature"]: t["last_step"] for t in best["trials"]}
    assert last[1.0] == 4 and min(last[0.03], last[0.031]) == 2 and best["stopped_early"] >= 1
    tagged = client.search_runs([exp.experiment_id], "tags.`usvs.stopped_early` = 'true'")
    assert len(tagged) == best["stopped_early"]
    assert all(float(c.data.params["objective.temperature"]) < 1 for c in tagged)
    assert client.get_run(parent.info.run_id).data.metrics["best/loss"] > 0
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "config")} >= {"config/best.yaml"}

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "usvs_dist.compare",
            "--parent",
            parent.info.run_id,
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlruns.db'}",
            "--out",
            str(tmp_path / "cmp"),
        ],
        cwd=tmp_path,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "objective.temperature" in proc.stdout.splitlines()[0] and len(proc.stdout.splitlines()) >= 4
    assert (tmp_path / "cmp" / "runs.csv").is_file()
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert "compare/runs.csv" in logged and "compare/loss_curves_top.png" in logged


@pytest.mark.parametrize("recipe", ["usvs2020", "dual2024"])
def test_shipped_sweep_files_validate(recipe):
    from tests.train.runner import REPO

    sweep = load_sweep(REPO / "configs" / f"sweep_{recipe}.yaml")
    assert sweep.base.objective.recipe == recipe and sweep.metric == "eval/retrieval/v2a_r1"
    assert "objective.temperature" in sweep.space


def test_tune_help_lists_the_sweep_keys_and_quiet_reaches_the_trials(phantom_shards, tmp_path, monkeypatch):
    import usvs_dist.tune.sweep as sweep_module
    from usvs_dist.tune.__main__ import main, parser

    text = parser().format_help()
    for f in dataclasses.fields(SweepConfig):
        assert f"  sweep.{f.name} (" in text or f"\nsweep.{f.name}: " in text, f.name  # a key or a section
    assert "\nsweep.asha: ASHA early stopping" in text and "(default null: off)" in text
    assert "  sweep.asha.grace_period (int, default 1)" in text and "--quiet" in text

    ran = []
    monkeypatch.setattr(
        sweep_module,
        "run_sweep",
        lambda sweep, *_, **__: ran.append(sweep) or {"parent_run_id": "p", "errors": 0},
    )
    path = _write(tmp_path / "s.yaml", {"space": TEMPERATURE}, _base(phantom_shards))
    assert main(["--config", str(path)]) == 0 and ran[-1].base.train.console is True
    assert main(["--config", str(path), "--quiet"]) == 0 and ran[-1].base.train.console is False
