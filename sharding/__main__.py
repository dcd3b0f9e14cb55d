"""Command line: `python -m sharding synth|build|inspect|bench ...`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

# The subcommands' modules are imported after the arguments are parsed: `build` and `inspect`
# pull in webdataset, which imports torch (seconds), and `--help` needs none of them.


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: X)` after each option's help, except where there is none to show (None, a
    flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected train,val,test fractions, got {text!r}") from exc
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three fractions train,val,test, got {text!r}")
    return parts  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    """The argument parser of all sharding subcommands."""
    p = argparse.ArgumentParser(prog="python -m sharding", description=__doc__, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)

    s = add("synth", "write a phantom data set of raw scans with a manifest")
    s.add_argument("--out", type=Path, required=True, help="folder of the raw scans and manifest.csv")
    s.add_argument("--scans", type=int, default=8, help="number of scans")
    s.add_argument("--seconds", type=float, default=30.0, help="length of each scan")
    s.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    s.add_argument("--fps", type=float, default=15.0, help="frame rate of the raw scans")
    s.add_argument("--size", type=int, default=128, help="frame side of the raw scans")
    s.add_argument(
        "--speech-share",
        type=float,
        default=0.8,
        help="share of plane segments whose narration is about the plane",
    )
    s.add_argument("--scans-per-patient", type=int, default=1, help="scans sharing a patient id")
    s.add_argument(
        "--video-only-scans", type=int, default=0, help="the last N scans have no narration (no audio stream)"
    )

    b = add("build", "cut clips and write shards with index.json (resumes an interrupted build)")
    b.add_argument("manifest", type=Path, help="CSV of scans (manifest.csv of `synth`, or your own)")
    b.add_argument("--out", type=Path, required=True, help="folder of the shards and index.json")
    _clip_arguments(b)
    b.add_argument(
        "--salt-file",
        type=Path,
        default=None,
        help="file holding the de-identification salt, >= 16 random bytes (else $USVS_SHARD_SALT, "
        "which leaks through job environments: prefer the file)",
    )
    b.add_argument(
        "--labels-vocabulary",
        type=Path,
        default=None,
        help="the data set's label classes: one per line, or YAML with classes and an optional coarse "
        "grouping (default: the 14 fetal standard-plane classes)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    b.add_argument("--allow-failures", action="store_true", help="exit 0 even when some scans failed")
    b.add_argument(
        "--ray-address",
        default=None,
        help="cut scans as Ray tasks on this cluster ('auto', an address, or 'local'); "
        "default $RAY_ADDRESS, which `ray job submit` sets, else local processes",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    b.add_argument(
        "--in-process",
        action="store_true",
        help="with --workers 1, cut scans in this process (a debugger sees them; a crashing decoder "
        "then ends the build) instead of in one worker process",
    )
    b.add_argument(
        "--log-paths",
        action="store_true",
        help="name the source file of each skipped scan on stderr (default: manifest line and column only)",
    )

    i = add("inspect", "print the index summary and decode samples")
    i.add_argument("folder", type=Path, help="a shard folder (with index.json)")
    i.add_argument("--verify", action="store_true", help="re-hash every shard and decode one sample of each")

    n = add("bench", "scan-seconds sharded per core-second, build against a naive cutter")
    n.add_argument("manifest", type=Path, help="CSV of scans")
    _clip_arguments(n)
    return p


def _clip_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--clip-seconds", type=float, default=2.0, help="clip length")
    b.add_argument(
        "--stride-seconds",
        type=float,
        default=0.0,
        help="start-to-start distance of clips (0: the clip length)",
    )
    b.add_argument(
        "--min-speech-ratio",
        type=float,
        default=0.0,
        help="drop clips with less narration (share of 20 ms frames)",
    )
    b.add_argument("--fps", type=float, default=8.0, help="frame rate stored in the clips")
    b.add_argument("--size", type=int, default=64, help="frame side stored in the clips (letterboxed)")
    b.add_argument(
        "--split", type=_fractions, default="0.8,0.1,0.1", help="train,val,test fractions of patients"
    )
    b.add_argument("--shard-clips", type=int, default=200, help="clips per shard")
    b.add_argument(
        "--max-gap-seconds",
        type=float,
        default=2.0,
        help="a jump between two frames' timestamps larger than this fails the scan",
    )
    b.add_argument(
        "--max-scan-seconds",
        type=float,
        default=4 * 3600.0,
        help="a scan longer than this fails (checked while decoding, before memory is spent)",
    )
    b.add_argument(
        "--no-narration",
        action="store_true",
        help="store no narration at all (every scan video-only): for narration that may hold spoken names",
    )
    b.add_argument(
        "--mask",
        default="auto",
        help="pixel de-identification, everything else blanked before encoding: auto (the imaging "
        "sector found per scan; a scan without one fails), box:x0,y0,x1,y1 (source pixels), or none",
    )
    b.add_argument(
        "--workers", type=int, default=1, help="local processes cutting scans (or Ray tasks in flight)"
    )
    b.add_argument(
        "--dicom-fps",
        type=float,
        default=None,
        help="frame rate of DICOM cine loops that state none (no FrameTime, FrameTimeVector, "
        "CineRate or RecommendedDisplayFrameRate); default: such scans fail",
    )


def _options(args: argparse.Namespace):
    """BuildOptions from the parsed arguments."""
    from sharding.build import BuildOptions
    from sharding.vocabulary import read_vocabulary

    opts = BuildOptions(
        clip_seconds=args.clip_seconds,
        stride_seconds=args.stride_seconds,
        min_speech_ratio=args.min_speech_ratio,
        fps=args.fps,
        size=args.size,
        split_fractions=args.split,
        shard_clips=args.shard_clips,
        mask=args.mask,
        narration=not getattr(args, "no_narration", False),
        max_gap_seconds=args.max_gap_seconds,
        max_scan_seconds=args.max_scan_seconds,
        overwrite=getattr(args, "overwrite", False),
        dicom_fps=args.dicom_fps,
    )
    vocabulary = getattr(args, "labels_vocabulary", None)
    if vocabulary is not None:
        opts = dataclasses.replace(opts, vocabulary=read_vocabulary(vocabulary))
    return opts


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; exit status 2 on bad input, 1 on scans, shard writes or checks that failed."""
    args = parser().parse_args(argv)
    from sharding import bench
    from sharding.build import BuildError, Execution, ShardWriteError, build
    from sharding.inspect import inspect
    from sharding.manifest import ManifestError
    from sharding.phantom import synthesize
    from sharding.runners import ray_address

    try:
        if args.command == "synth":
            manifest = synthesize(
                args.out,
                scans=args.scans,
                seconds=args.seconds,
                seed=args.seed,
                fps=args.fps,
                size=args.size,
                speech_share=args.speech_share,
                scans_per_patient=args.scans_per_patient,
                video_only_scans=args.video_only_scans,
            )
            print(f"wrote {manifest}")
            return 0
        if args.command == "build":
            execution = Execution(
                workers=args.workers,
                ray_address=ray_address(args.ray_address),
                progress=not args.no_progress,
                log_paths=args.log_paths,
                isolate=not args.in_process,
            )
            index = build(args.manifest, args.out, args.salt_file, _options(args), execution=execution)
            totals = index["totals"]
            print(
                f"wrote {len(index['shards'])} shards, {totals['clips']} clips to {args.out} "
                f"({totals['failed_scans']} scans failed)"
            )
            return 1 if totals["failed_scans"] and not args.allow_failures else 0
        if args.command == "bench":
            bench.run(args.manifest, _options(args), args.workers)
            return 0
        return 1 if inspect(args.folder, verify=args.verify) else 0
    except (ManifestError, BuildError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ShardWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
