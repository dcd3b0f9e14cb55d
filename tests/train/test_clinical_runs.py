"""Training and evaluating on clinical-style data: scans without narration, a 4-class vocabulary."""

from __future__ import annotations

import pytest

from tests.conftest import LUNG_CLASSES
from tests.train.runner import TINY, run_entry, steps_logged, train
from usvs_dist.train.__main__ import main as train_main

STEPS = ["train.steps=4", "train.checkpoint_every=4", "train.num_workers=2", "optim.warmup_steps=0"]


def test_a_recipe_reading_narration_stops_before_ray_on_a_video_only_split(
    video_only_shards, tmp_path, monkeypatch, capsys
):
    # The entry's main in this process (the module ends in sys.exit(main())): a subprocess would
    # spend the test importing torch and torchvision. The slow tests below run the entry itself.
    monkeypatch.chdir(tmp_path)
    code = train_main([f"data.shards={video_only_shards}", *TINY])
    out, err = capsys.readouterr()
    assert code == 2, out[-2000:] + err[-2000:]
    assert "objective.recipe=usvs2020 reads the narration" in err
    assert "0 clips with narration and 36 without" in err
    assert "Started a local Ray instance" not in out + err
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlruns.db").exists()


@pytest.mark.slow
def test_isbi2020_trains_on_video_only_scans_and_the_vocabulary_reaches_the_report(
    video_only_shards, tmp_path
):
    run = train(tmp_path, video_only_shards, "objective.recipe=isbi2020", *STEPS)
    assert steps_logged(run.client, run.run_id, "order_loss") == [1, 2, 3, 4]
    metrics = run.client.get_run(run.run_id).data.metrics
    assert metrics["data/clips_without_narration_left_out"] == 0
    out = tmp_path / "eval"
    proc = run_entry(
        tmp_path,
        "usvs_dist.evaluate",
        *("--checkpoint", str(run.checkpoint), "--task", "planes", "--protocol", "linear"),
        # These shards hold one split (train): plane detection reads it instead of the held-out test.
        *("--out", str(out), "eval.folds=3", "eval.plane_splits=[train]"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "4 classes (clips): " in report and all(f"{name} (" in report for name in LUNG_CLASSES)
    assert (out / "confusion_video_linear.png").is_file()
    metrics = run.client.get_run(run.run_id).data.metrics
    assert 0.0 <= metrics["downstream/planes/video/linear/f1"] <= 1.0


@pytest.mark.slow
def test_awcl2022_trains_on_video_only_scans_with_the_vocabularys_coarse_groups(video_only_shards, tmp_path):
    run = train(
        tmp_path,
        video_only_shards,
        "objective.recipe=awcl2022",
        "objective.anatomy.granularity=coarse",
        *STEPS,
    )
    assert steps_logged(run.client, run.run_id, "anatomy_loss") == [1, 2, 3, 4]
    assert "no coarse grouping" not in run.output


@pytest.mark.slow
def test_usvs2020_on_a_mixed_data_set_trains_on_the_narrated_clips_and_says_how_many_it_left_out(
    mixed_shards, tmp_path
):
    run = train(tmp_path, mixed_shards, "objective.recipe=usvs2020", *STEPS)
    assert "data: 12 clips of split train have no narration and are left out" in run.output
    metrics = run.client.get_run(run.run_id).data.metrics
    assert metrics["data/clips_without_narration_left_out"] == 12
    assert metrics["bad_samples"] == 0 and steps_logged(run.client, run.run_id) == [1, 2, 3, 4]
