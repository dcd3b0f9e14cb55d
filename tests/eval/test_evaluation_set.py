"""Which clips and scans an evaluation reads (a scan-stratified sample, held-out splits, a separate
shard set) and its baselines (random init; weights init when model.*_weights name files)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.data.shardkit import phantom_samples
from tests.eval.fakes import RecordingTracker
from usvs_dist.config import EvalConfig, load_config, to_yaml
from usvs_dist.data import schema
from usvs_dist.data.decode import ClipDecoder
from usvs_dist.eval import tasks
from usvs_dist.eval.clips import load_clips, stratified_rows
from usvs_dist.eval.encoders import ENCODERS_FILE, RUN_FILE, build_encoders, weights_twin
from usvs_dist.evaluate import evaluate
from usvs_dist.evaluate import main as evaluate_main
from usvs_dist.models import build_encoder

TINY = ["model.width=4", "model.embed_dim=8", "data.frame_size=32", "data.num_frames=4"]
QUICK = ["eval.folds=3", "eval.probe_iters=10"]


def _repack(out: Path, shards: Path, layout: dict[str, list[str]]) -> Path:
    """A shard folder whose split `new` holds the clips of the source's splits `layout[new]`, in
    tars of 5 clips; its index.json lists only those splits (as a separate evaluation set's may)."""
    template = schema.read_index(shards)
    out.mkdir(parents=True)
    entries, splits = [], {}
    for split, sources in layout.items():
        samples = [s for source in sources for s in phantom_samples(shards, source)]
        for k in range(0, len(samples), 5):
            name = schema.shard_name(split, k // 5)
            with tarfile.open(out / name, "w") as tar:
                for sample in samples[k : k + 5]:
                    for ext, data in sample.items():
                        if ext != "__key__":
                            info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                            info.size = len(data)
                            tar.addfile(info, io.BytesIO(data))
            clips = len(samples[k : k + 5])
            entries.append({"name": name, "split": split, "clips": clips, "seconds": 2.0 * clips})
        splits[split] = {"clips": len(samples)}
    (out / schema.INDEX_NAME).write_text(json.dumps({**template, "shards": entries, "splits": splits}))
    return out


@pytest.fixture(scope="module")
def test_only_shards(phantom_shards, tmp_path_factory) -> Path:
    """All 6 scans (36 clips) of the phantom shards as one `test` split, no other split indexed."""
    return _repack(tmp_path_factory.mktemp("eval_set") / "shards", phantom_shards, {"test": ["train", "val"]})


@pytest.fixture(scope="module")
def held_out_shards(phantom_shards, tmp_path_factory) -> Path:
    """The phantom's train scans as train, its 2 val scans (one patient) as the test split."""
    return _repack(
        tmp_path_factory.mktemp("held_out") / "shards", phantom_shards, {"train": ["train"], "test": ["val"]}
    )


# --- the sample -------------------------------------------------------------------------------


def _scans(sizes: list[int]) -> list[str]:
    return [f"s{k}" for k, size in enumerate(sizes) for _ in range(size)]


def test_the_sample_spreads_the_budget_evenly_over_every_scan():
    scans = _scans([10, 10, 10, 10])
    counts = Counter(scans[i] for i in stratified_rows(scans, 10, seed=0))
    assert set(counts) == {"s0", "s1", "s2", "s3"} and sorted(counts.values()) == [2, 2, 3, 3]
    # A small scan gives what it cannot use to the others, which stay within one clip of each other.
    scans = _scans([2, 9, 9, 9, 30])
    counts = Counter(scans[i] for i in stratified_rows(scans, 21, seed=0))
    assert counts["s0"] == 2 and sorted(counts[s] for s in ("s1", "s2", "s3", "s4")) == [4, 5, 5, 5]
    assert sum(counts.values()) == 21


def test_the_sample_spreads_over_a_scans_length_not_its_first_clips():
    scans = _scans([100, 100])
    rows = stratified_rows(scans, 8, seed=3)
    first = [r for r in rows if r < 100]
    assert len(first) == 4 and max(first) - min(first) >= 70
    assert all(b - a >= 20 for a, b in zip(first, first[1:], strict=False))  # stride 25, floored


def test_the_sample_is_fixed_by_its_seed_and_differs_between_seeds():
    scans = _scans([7, 13, 5, 20, 11])
    assert stratified_rows(scans, 17, seed=4) == stratified_rows(scans, 17, seed=4)
    assert stratified_rows(scans, 17, seed=4) != stratified_rows(scans, 17, seed=5)
    rows = stratified_rows(scans, 17, seed=4)
    assert rows == sorted(set(rows)) and len(rows) == 17


def test_a_budget_as_large_as_the_set_takes_it_all_and_a_tiny_one_one_clip_a_scan():
    scans = _scans([3, 4])
    assert stratified_rows(scans, 7, seed=0) == list(range(7)) == stratified_rows(scans, 100, seed=1)
    scans = _scans([5, 5, 5, 5, 5])
    picked = [scans[i] for i in stratified_rows(scans, 3, seed=2)]
    assert len(set(picked)) == 3  # one clip each of 3 scans drawn by the seed


def test_load_clips_samples_every_scan_and_decodes_only_what_it_keeps(test_only_shards, monkeypatch):
    cfg = load_config(None, TINY)
    calls = []
    decode = ClipDecoder.__call__
    monkeypatch.setattr(
        ClipDecoder, "__call__", lambda self, s: calls.append(s["__key__"]) or decode(self, s)
    )
    clips = load_clips(cfg.data, test_only_shards, ["test"], 12, audio=False, seed=0)
    assert len(calls) == len(clips) == 12 and clips.available == 36
    assert sorted(Counter(clips.scan).values()) == [2] * 6  # 6 scans of 6 clips: 2 each
    assert clips.split == ["test"] * 12 and clips.by_split()["test"][0] == 12
    again = load_clips(cfg.data, test_only_shards, ["test"], 12, audio=False, seed=0)
    other = load_clips(cfg.data, test_only_shards, ["test"], 12, audio=False, seed=1)
    assert torch.equal(again.video, clips.video) and not torch.equal(other.video, clips.video)
    everything = load_clips(cfg.data, test_only_shards, ["test"], 36, audio=False, seed=0)
    assert len(everything) == 36 and everything.available == 36


# --- held-out scans and a separate shard set ---------------------------------------------------


def test_by_default_planes_read_only_the_held_out_test_scans(held_out_shards):
    cfg = load_config(None, TINY)
    assert EvalConfig().plane_splits == ["test"] and cfg.eval.periodic_plane_splits == ["train"]
    clips = tasks.LABELLED_CLIPS.load(cfg, held_out_shards, cfg.eval.max_clips)
    assert set(clips.split) == {"test"} and len(clips) == 12
    val_scans = {json.loads(s["json"])["scan"] for s in phantom_samples(held_out_shards, "test")}
    assert set(clips.scan) == val_scans and len(val_scans) == 2
    # The default 5 folds need 5 scans: the error names the count, the key and the fixes.
    enc = build_encoders(cfg, None, "trained")
    with pytest.raises(ValueError, match=r"2 scans, fewer than eval\.folds=5; lower eval\.folds"):
        tasks.planes(enc, clips, ("linear",))


def test_periodic_evaluation_probes_the_training_scans_and_needs_eval_folds_of_them(held_out_shards, caplog):
    from usvs_dist.train.periodic_eval import PeriodicEval

    cfg = load_config(None, [*TINY, "eval.subset=12", "eval.folds=4"])
    clips = PeriodicEval(cfg, str(held_out_shards)).clips["planes/saliency"]
    assert set(clips.split) == {"train"} and sorted(Counter(clips.scan).values()) == [3] * 4
    cfg = load_config(None, [*TINY, "eval.subset=12"])  # 5 folds, 4 training scans
    assert "planes/saliency" not in PeriodicEval(cfg, str(held_out_shards)).clips
    assert "labelled clips of 4 scans, fewer than eval.folds=5" in caplog.text


def test_splits_a_shard_set_lacks_are_named_with_the_ones_it_has(test_only_shards):
    cfg = load_config(None, [*TINY, "eval.plane_splits=[train,val]"])
    with pytest.raises(
        ValueError, match=r"eval\.plane_splits.*no decodable clip in split\(s\) train, val.*here: test"
    ):
        tasks.LABELLED_CLIPS.load(cfg, test_only_shards, 100)


def _checkpoint(folder: Path, cfg) -> Path:
    """encoders.pt (video and image encoders) and config.yaml of a fresh tiny model, and run.json."""
    folder.mkdir(parents=True)
    enc = build_encoders(cfg, None, "trained")
    torch.save(
        {f"{m}_encoder": enc.encoders[m].state_dict() for m in ("video", "image")}, folder / ENCODERS_FILE
    )
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / RUN_FILE).write_text(json.dumps({"mlflow_run_id": "r0", "tracking_uri": "sqlite:///x.db"}))
    return folder


def _perturbed_image_weights(cfg, path: Path) -> dict[str, torch.Tensor]:
    """A tiny image encoder's state dict, every float tensor + 0.25, saved at `path`."""
    torch.manual_seed(123)
    state = {
        k: v + 0.25 if v.is_floating_point() else v
        for k, v in build_encoder(cfg, "image").state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_a_test_only_shard_set_evaluates_with_a_weights_init_column(
    test_only_shards, tmp_path, monkeypatch, capsys
):
    import usvs_dist.tracking as tracking

    monkeypatch.setattr(tracking, "MlflowTracker", RecordingTracker)
    cfg = load_config(None, TINY)
    ckpt = _checkpoint(tmp_path / "ckpt", cfg)
    weights = tmp_path / "weights" / "tiny-imagenet.pt"
    saved = _perturbed_image_weights(cfg, weights)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--shards", str(test_only_shards), "--task", "planes"]
    argv += ["--protocol", "linear", "--out", str(out), *QUICK, "eval.max_clips=24"]
    assert evaluate_main([*argv, f"model.image_weights={weights}"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()

    # The held-out set: split, scan and clip counts, hashed ids; no folder of shards or weights.
    assert "split test: 6 scans, 24 clips; scans: " in report
    ids = re.search(r"split test: .*; scans: (.*)", report).group(1).split(", ")
    assert len(ids) == 6 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert "a scan-stratified sample (eval.seed=0) of their 36 clips" in report
    assert str(test_only_shards) not in report and str(weights.parent) not in report

    # The third column, named after the file's stem; the video encoder has no file: "—".
    header = "| pretrained | random init | tiny-imagenet init | gain vs random | gain vs tiny-imagenet init |"
    assert f"| metric {header}" in report and "leaves out the video encoder" in report
    rows = {
        cells[0]: cells
        for line in report.splitlines()
        if line.startswith("| planes/")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["planes/video/linear/f1"][3] == rows["planes/video/linear/f1"][5] == "—"
    assert rows["planes/image/linear/f1"][3] != "—" and rows["planes/image/linear/f1"][5] != "—"
    logged = RecordingTracker.logged
    assert "downstream_init/planes/image/linear/f1" in logged
    assert "downstream_gain_init/planes/image/linear/f1" in logged
    assert not any(k.startswith("downstream_init/planes/video") for k in logged)
    assert logged["downstream_gain_init/planes/image/linear/f1"] == pytest.approx(
        logged["downstream/planes/image/linear/f1"] - logged["downstream_init/planes/image/linear/f1"]
    )

    # The column's encoder holds exactly the file's weights.
    enc = build_encoders(load_config(None, [*TINY, f"model.image_weights={weights}"]), None, "trained")
    init = weights_twin(enc)
    assert list(init.encoders) == ["image"] and init.source == "tiny-imagenet init"
    assert all(torch.equal(v, saved[k]) for k, v in init.encoders["image"].state_dict().items())

    # Without a weights file: no third column, no init metrics, and the report says so.
    assert evaluate_main(argv) == 0
    report = (out / "report.md").read_text()
    assert "| metric | pretrained | random init | gain |" in report and "gain vs" not in report
    assert "no weights-init baseline" in report
    assert not any(
        k.startswith(("downstream_init/", "downstream_gain_init/")) for k in RecordingTracker.logged
    )


def test_a_weights_file_missing_here_names_the_key_and_how_to_leave_the_baseline_out(
    test_only_shards, tmp_path
):
    cfg = load_config(None, [*TINY, *QUICK, f"model.video_weights={tmp_path / 'gone.pt'}"])
    enc = build_encoders(cfg, None, "trained")
    with pytest.raises(FileNotFoundError, match=r"model\.video_weights=.*set model\.video_weights=''"):
        evaluate(enc, str(test_only_shards), ["planes"], ("linear",), tmp_path)


def test_the_report_shows_salted_scan_hashes_as_they_are_and_hashes_anything_else():
    from usvs_dist.eval.report import scan_id

    assert scan_id("0e66841428debec0") == "0e66841428debec0"
    shown = scan_id("patient-007_scan2")  # shards from another writer could carry names
    assert "patient" not in shown and len(shown) == 16 and shown == scan_id("patient-007_scan2")


def test_a_run_evaluated_on_shards_other_than_it_trained_on_is_warned_about(
    test_only_shards, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    import usvs_dist.tracking as tracking
    from usvs_dist.data.shards import index_sha256
    from usvs_dist.evaluate import other_shards_note

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e")
    same = client.create_run(experiment, tags={"shard_index_sha256": index_sha256(test_only_shards)})
    other = client.create_run(experiment, tags={"shard_index_sha256": "0" * 64})
    untagged = client.create_run(experiment)
    assert other_shards_note(uri, same.info.run_id, str(test_only_shards)) is None
    assert other_shards_note(uri, untagged.info.run_id, str(test_only_shards)) is None

    # The run's own data (no --shards), which changed since: the report says so at its top.
    monkeypatch.setattr(tracking, "MlflowTracker", RecordingTracker)
    cfg = load_config(None, [*TINY, f"data.shards={test_only_shards}"])
    ckpt = _checkpoint(tmp_path / "ckpt", cfg)
    (ckpt / RUN_FILE).write_text(json.dumps({"mlflow_run_id": other.info.run_id, "tracking_uri": uri}))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--task", "planes", "--protocol", "linear", "--out", str(out)]
    assert evaluate_main([*argv, *QUICK, "eval.max_clips=12"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert report.startswith(
        f"> **Warning:** these shards (index.json sha256 {index_sha256(test_only_shards)[:12]}…) are not "
        f"the ones run {other.info.run_id} trained on (000000000000…)"
    )
    assert str(test_only_shards) not in report
