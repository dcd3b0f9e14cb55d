"""Choosing the checkpoint a rerun continues from when Ray has no snapshot of the run."""

from __future__ import annotations

import json

from usvs_dist.train.resume import latest_complete_checkpoint


def _checkpoint(run_dir, name, step, world, ranks_done):
    folder = run_dir / name
    (folder / "rng").mkdir(parents=True)
    (folder / "train_state.json").write_text(json.dumps({"step": step, "samples": 0, "world_size": world}))
    for r in range(ranks_done):
        (folder / "rng" / f"rank_{r}.pt").write_bytes(b"x")
    return folder


def test_newest_complete_checkpoint_wins(tmp_path):
    run = tmp_path / "run-a"
    _checkpoint(run, "checkpoint_2026-01-01_00-00-01", 10, 2, 2)
    best = _checkpoint(run, "checkpoint_2026-01-01_00-00-02", 20, 2, 2)
    _checkpoint(run, "checkpoint_2026-01-01_00-00-03", 30, 2, 1)  # rank 1 never finished writing
    (run / "checkpoint_2026-01-01_00-00-04").mkdir()  # interrupted before train_state.json
    assert latest_complete_checkpoint(str(tmp_path), "run-a") == str(best)


def test_no_run_or_no_complete_checkpoint_gives_none(tmp_path):
    assert latest_complete_checkpoint(str(tmp_path), "missing") is None
    _checkpoint(tmp_path / "run-b", "checkpoint_x", 5, 2, 0)
    assert latest_complete_checkpoint(str(tmp_path), "run-b") is None
