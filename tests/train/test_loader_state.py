"""The loader's position travels in every rank's checkpoint file and restores the epoch."""

from __future__ import annotations

import logging

from usvs_dist.train.loop import LoaderProgress, _load_rank_state, _save_rank_state


def _batch(worker: int, pos: int, done: int, bad: int = 0) -> dict:
    return {
        "worker": worker,
        "loader_pos": pos,
        "loader_batches": done,
        "bad_samples": bad,
        "padded_samples": 0,
        "frames_decoded": 20,
        "frames_used": 10,
    }


def test_positions_and_counts_round_trip_through_the_rank_file(tmp_path):
    progress = LoaderProgress(epoch=2, world_size=2, workers=2, saved={})
    progress.update(_batch(0, 12, 3, bad=1))
    progress.update(_batch(1, 9, 2))
    _save_rank_state(tmp_path, rank=1, loader_state=progress.state())

    saved = _load_rank_state(tmp_path, rank=1)
    restored = LoaderProgress(epoch=2, world_size=2, workers=2, saved=saved)
    assert restored.positions == {0: (12, 3), 1: (9, 2)}
    assert restored.totals() == (1, 0)
    assert progress.frames_ratio() == 2.0


def test_a_new_epoch_or_another_layout_starts_the_epoch_afresh(tmp_path, caplog):
    progress = LoaderProgress(epoch=0, world_size=2, workers=1, saved={})
    progress.update(_batch(0, 5, 1, bad=2))
    saved = progress.state()
    assert LoaderProgress(epoch=1, world_size=2, workers=1, saved=saved).positions == {}
    with caplog.at_level(logging.WARNING):
        other = LoaderProgress(epoch=0, world_size=4, workers=1, saved=saved)
    assert other.positions == {} and "the epoch restarts from its beginning" in caplog.text
    assert other.totals() == (2, 0)  # skipped-sample counts carry over
    progress.next_epoch()
    assert progress.epoch == 1 and progress.positions == {} and progress.totals() == (2, 0)
    assert _load_rank_state(tmp_path, rank=3) == {}
