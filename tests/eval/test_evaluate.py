"""`python -m usvs_dist.evaluate`: the learning check end to end, and its bad-input exits."""

from __future__ import annotations

import subprocess

import pytest

from tests.train.runner import REPO, run_entry, steps_logged, train
from usvs_dist.evaluate import main as evaluate_main


def _evaluate(*args: str, cwd) -> subprocess.CompletedProcess:
    return run_entry(cwd, "usvs_dist.evaluate", *args)


@pytest.mark.slow
def test_pretraining_beats_random_init_on_the_linear_plane_probe(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.mktemp("phantom_cache")
    run = train(
        tmp_path,
        None,
        f"phantom.cache_dir={cache}",
        "train.steps=80",
        "train.checkpoint_every=80",
        "eval.every=40",
        "eval.subset=48",
        "train.run_name=learning-check",
        tiny=False,
    )
    # Periodic evaluation logged to the training run.
    assert steps_logged(run.client, run.run_id, "eval/planes/video/linear/f1") == [40, 80]
    assert steps_logged(run.client, run.run_id, "eval/retrieval/v2a_r1") == [40, 80]
    assert steps_logged(run.client, run.run_id, "eval/seconds") == [40, 80]  # what each call cost

    proc = _evaluate(
        "--checkpoint",
        str(run.checkpoint),
        "--task",
        "planes",
        "--protocol",
        "linear",
        "--out",
        str(tmp_path / "eval"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = run.client.get_run(run.run_id).data.metrics
    pretrained = metrics["downstream/planes/video/linear/f1"]
    random = metrics["downstream_random/planes/video/linear/f1"]
    print(f"linear-probe macro-F1 (5 folds by scan): pretrained {pretrained:.4f}, random {random:.4f}")
    assert pretrained > random
    assert metrics["downstream_gain/planes/video/linear/f1"] == pytest.approx(pretrained - random)
    assert metrics["downstream_time/planes_s"] > 0  # both encoder sets' wall time
    assert (tmp_path / "eval" / "report.md").is_file()
    artifacts = {a.path for a in run.client.list_artifacts(run.run_id, "downstream")}
    assert {"downstream/report.md", "downstream/confusion_video_linear.png"} <= artifacts


def test_bad_arguments_exit_2_naming_the_problem(tmp_path, monkeypatch, capsys):
    # The entry's main in this process (the module ends in sys.exit(main())): a subprocess would
    # spend the test importing torch. The slow test above runs the entry as users do.
    monkeypatch.chdir(tmp_path)
    assert evaluate_main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no encoders.pt there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's exit
        evaluate_main(["--checkpoint", str(tmp_path), "--task", "colour"])
    assert exited.value.code == 2 and "invalid choice: 'colour'" in capsys.readouterr().err
    assert REPO.is_dir()
