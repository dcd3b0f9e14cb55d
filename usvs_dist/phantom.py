"""The phantom shards of the quickstart, built once into a cache keyed by their settings.

An entry-layer module, like evaluate.py: the one place in usvs_dist that calls `sharding`. The
entries (`python -m usvs_dist.train`, `.tune`, `.evaluate`, `.bench loader`) resolve an empty
`data.shards` to these shards and hand the folder down; nothing below them builds shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from sharding.build import BuildOptions, Execution, build
from sharding.phantom import synthesize
from usvs_dist import __version__
from usvs_dist.config.schema import PhantomConfig, RootConfig
from usvs_dist.data import schema

# The phantom holds no real identifiers; a fixed salt keeps its shards reproducible. Patient
# splits follow from the salted hashes and phantom.split_fractions: this salt gives the default
# phantom (12 scans, seed 0, shares 0.55/0.1/0.35) 5 patients in train, 1 in val (periodic
# retrieval) and 6 in test (held-out plane detection needs eval.folds=5 scans there).
PHANTOM_SALT = b"usvs-phantom-not-a-secret-8"
PHANTOM_REVISION = 3
"""Part of the cache key: bumped when the phantom's bytes change (2: burned-in text, masking and
HMAC ids; 3: planes told apart by the arrangement of shared structures under probe nuisance), so
an older cache is rebuilt rather than reused."""


def phantom_dir(cfg: PhantomConfig, raw_fps: float | None = None) -> Path:
    """Cache folder of the phantom shards for these settings (and this format/tool version)."""
    settings = {**asdict(cfg), "format": schema.FORMAT_VERSION, "tool": __version__}
    settings.pop("cache_dir")
    settings["revision"] = PHANTOM_REVISION
    # Only when given, so the quickstart's cache keeps its key.
    if raw_fps is not None:
        settings["raw_fps"] = raw_fps
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir).expanduser() / f"phantom-{key}"


def ensure_phantom_shards(
    cfg: PhantomConfig, log=print, workers: int = 1, *, raw_fps: float | None = None
) -> Path:
    """Shard folder of the phantom data set, synthesising and building it on first use (cutting
    scans on `workers` processes; the shards' bytes do not depend on it).

    `raw_fps` (the synthesized scans' frame rate; default the phantom's 15) is for corpora other
    than the quickstart's, such as `bench learning`'s, rendered at the rate they are stored at.
    """
    root = phantom_dir(cfg, raw_fps)
    shards = root / "shards"
    if (shards / schema.INDEX_NAME).is_file():
        return shards
    on = f" on {workers} processes" if workers > 1 else ""
    log(f"building the phantom data set into {root}{on} (first use; reused afterwards)")
    work = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    manifest = synthesize(
        work / "raw",
        scans=cfg.scans,
        seconds=cfg.seconds,
        seed=cfg.seed,
        speech_share=cfg.speech_share,
        log=log,
        **({} if raw_fps is None else {"fps": raw_fps}),
    )
    salt = work / "salt"
    salt.write_bytes(PHANTOM_SALT)
    build(
        manifest,
        work / "shards",
        salt,
        BuildOptions(
            clip_seconds=cfg.clip_seconds,
            fps=cfg.fps,
            size=cfg.size,
            split_fractions=tuple(cfg.split_fractions),
        ),
        log=log,
        execution=Execution(workers=workers),
    )
    # Publish atomically: a concurrent or interrupted build never leaves a half-made cache.
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists() and not (shards / schema.INDEX_NAME).is_file():
        shutil.rmtree(root)  # left by an older, broken build
    try:
        os.replace(work, root)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another process published first
    return shards


def resolve_shards(cfg: RootConfig, log=print) -> str:
    """`data.shards` as configured, or when it is empty the phantom shards (built on first use)."""
    return cfg.data.shards or str(ensure_phantom_shards(cfg.phantom, log=log).resolve())
