"""Finding the checkpoint a rerun continues from.

Ray restores `ray.train.get_checkpoint()` for a rerun with the same (storage_path, name) from
its checkpoint_manager_snapshot.json; a driver stopped by Ctrl-C or killed may never write that
snapshot (seen with Ray 2.60: the run's checkpoints were in storage, the snapshot was not), and
the rerun then started from step 0. Ray also registers a reported checkpoint asynchronously, so
a worker killed just after a report can restart its group from an older one, or from none.
Workers therefore scan the run's folder for the newest complete checkpoint when they start.
"""

from __future__ import annotations

import json

import pyarrow.fs

from usvs_dist.train.state import STATE_FILE

RNG_DIR = "rng"


def _filesystem(storage_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), storage_path


def latest_complete_checkpoint(storage_path: str, run_name: str) -> str | None:
    """Path (or URI) of the newest checkpoint of the run that every rank finished writing, or None.

    Complete means train_state.json (rank 0 writes it last) and one RNG file per rank of the
    world size that wrote it, each rank writing its RNG after its DeepSpeed shard.
    """
    fs, root = _filesystem(storage_path)
    run_dir = f"{root.rstrip('/')}/{run_name}"
    if fs.get_file_info(run_dir).type != pyarrow.fs.FileType.Directory:
        return None
    best: tuple[int, str] | None = None
    for info in fs.get_file_info(pyarrow.fs.FileSelector(run_dir)):
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        state_path = f"{info.path}/{STATE_FILE}"
        if fs.get_file_info(state_path).type != pyarrow.fs.FileType.File:
            continue
        with fs.open_input_stream(state_path) as f:
            state = json.loads(f.read())
        rng = fs.get_file_info(pyarrow.fs.FileSelector(f"{info.path}/{RNG_DIR}", allow_not_found=True))
        if len([r for r in rng if r.base_name.startswith("rank_")]) != state.get("world_size", 0):
            continue
        if best is None or state["step"] > best[0]:
            best = (state["step"], info.path)
    if best is None:
        return None
    return best[1] if "://" not in storage_path else storage_path.split("://")[0] + "://" + best[1]
