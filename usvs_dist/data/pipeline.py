"""The training loader: one commented list of stages per stream, read top to bottom.

Every rank runs `data.loader_workers` streams (one per DataLoader worker, or one in-process);
the epoch plan (data/epoch.py) fixes what each reads, so every rank yields the same number of
batches, no clip is read twice in an epoch (unless `data.resample`), and a stream restarts from a
position kept in the checkpoint. Batch keys: see docs/architecture.md ("Loader").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

from usvs_dist.config.schema import DataConfig
from usvs_dist.data import schema
from usvs_dist.data.backends import DecoderChoice, resolve_decoder
from usvs_dist.data.decode import BatchFinisher, ClipDecoder, TarErrors, has_narration
from usvs_dist.data.epoch import EpochPlan, plan_epoch, read_order, read_stream
from usvs_dist.data.shards import Shard, load_index, split_shards

log = logging.getLogger(__name__)
Positions = dict[int, tuple[int, int]]
"""Loader state of one rank: worker -> (clips read from its stream, batches it yielded)."""


class RankEpoch(IterableDataset):
    """One rank's batches of one epoch; each DataLoader worker runs its own stream of the plan."""

    def __init__(
        self,
        cfg: DataConfig,
        shards: list[Shard],
        plan: EpochPlan,
        rank: int,
        clip_seconds: float,
        positions: Positions | None = None,
        finish_in_worker: bool = False,
        *,
        decoder: DecoderChoice | None = None,
        classes: int = len(schema.PLANES),
        audio: bool = True,
    ):
        """`decoder`: the resolved `data.decoder` and device (None: `data.decoder` on the CPU)."""
        super().__init__()
        self.cfg, self.shards, self.plan, self.rank = cfg, shards, plan, rank
        self.clip_seconds, self.positions = clip_seconds, dict(positions or {})
        self.decoder = decoder or resolve_decoder(cfg.decoder, "cpu")
        self.finish_in_worker = finish_in_worker
        self.classes, self.audio = classes, audio

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        # The DataLoader's round robin starts at its worker 0; a resumed epoch must go on with the
        # stream whose turn was next, so DataLoader worker i runs stream (i + first) % workers.
        done_so_far = sum(d for _, d in self.positions.values())
        worker = ((info.id if info is not None else 0) + done_so_far) % self.plan.workers
        stream = self.rank * self.plan.workers + worker
        units = self.plan.streams[stream]
        start, done = self.positions.get(worker, (0, 0))

        def make_decoder() -> ClipDecoder:
            return ClipDecoder(
                self.cfg,
                self.clip_seconds,
                self.rank,
                train=True,
                decoder=self.decoder,
                epoch=self.plan.epoch,
                classes=self.classes,
                audio=self.audio,
            )

        decoder = make_decoder()
        # 1. Seeded shuffle by epoch, split by node, split by worker: the plan gave this stream
        #    its units; their interleaved order is a function of (seed, epoch, stream).
        order = read_order(units, self.cfg.interleave, f"{self.cfg.seed}-{self.plan.epoch}-{stream}")
        # 2. Tar -> samples from the position on; tar errors are logged, counted, skipped. A recipe
        #    reading the narration sees only clips that have one (the plan counted only those).
        keep = has_narration if self.audio else None
        samples = read_stream(self.shards, units, order, start, TarErrors(decoder), keep)
        # 3. Decode (data.decoder), frame sampling, image frame, the crop and jitter draws; bad
        #    samples counted.
        decoded = _decode(samples, decoder)

        # 4. Full batches only, exactly the plan's number (the gathered losses and Ray's report
        #    barrier need every rank in step).
        def first_batch() -> dict | None:
            # A stream resumed after its last full batch pads with its epoch's first one instead;
            # a decoder of its own, so the re-read's bad samples are not counted twice.
            again = make_decoder()
            reread = _decode(read_stream(self.shards, units, order, 0, TarErrors(again), keep), again)
            clips = [c for _, c in itertools.islice(reread, self.cfg.batch_size)]
            return default_collate(clips) if len(clips) == self.cfg.batch_size else None

        batches = _batches(
            decoded,
            decoder,
            self.cfg.batch_size,
            self.plan.batches_per_stream,
            (start, done),
            worker,
            first_batch,
        )
        # 5. Each clip's crop, flip and intensity jitter, uint8 -> float, narration -> log-mel, per
        #    batch (BatchFinisher). Training on CPU: here, so the workers share that work (finishing
        #    in the training process instead takes a core from them; docs/measurements.md). On a
        #    GPU: in the training process on the GPU (EpochLoader.epoch), so the workers only read,
        #    decode and pick frames, and uint8 frames at their stored size cross the worker
        #    boundary and the host-to-GPU copy at a quarter of the bytes of floats.
        return map(BatchFinisher(self.cfg), batches) if self.finish_in_worker else batches


def _decode(samples: Iterator[tuple[int, dict | None]], decoder: ClipDecoder) -> Iterator[tuple[int, dict]]:
    for pos, sample in samples:
        if sample is None:
            decoder.seen += 1
            decoder.count_bad("the shard ended before index.json's clip count", "?", "?")
            continue
        out = decoder(sample)
        if out is not None:
            yield pos, out


def _batches(
    decoded: Iterator[tuple[int, dict]],
    decoder: ClipDecoder,
    size: int,
    quota: int,
    resume: tuple[int, int],
    worker: int,
    first_batch: Callable[[], dict | None] = lambda: None,
) -> Iterator[dict]:
    pos, done = resume
    pending: list[dict] = []
    last: dict | None = None
    padded = 0
    while done < quota:
        item = next(decoded, None)
        if item is not None:
            pos, sample = item
            pending.append(sample)
            if len(pending) < size:
                continue
            last, pending = default_collate(pending), []
        elif last is None and (done == 0 or (last := first_batch()) is None):
            raise RuntimeError(
                f"loader worker {worker} produced no full batch of {size} from its shards "
                f"({decoder.bad} of {decoder.seen} samples bad)"
            )
        else:
            # Bad samples left the stream short: repeat its last batch (counted) to stay in step.
            padded += size
        done += 1
        yield {
            **last,
            "loader_pos": pos,
            "loader_batches": done,
            "worker": worker,
            "bad_samples": decoder.bad,
            "padded_samples": padded,
            "frames_decoded": decoder.frames_decoded,
            "frames_used": decoder.frames_used,
        }


class EpochLoader:
    """A rank's loader: `batches()` runs epoch after epoch from where `state_dict()` says it is.

    `epoch(e, positions)` is the single-epoch DataLoader under it. The state is this rank's epoch,
    each worker's stream position, and the bad/padded sample counts; a checkpoint keeps it, and
    `load_state_dict` continues right after the last batch `batches()` yielded.
    """

    def __init__(
        self,
        cfg: DataConfig,
        location: str | Path,
        rank: int,
        world_size: int,
        use_gpu: bool = False,
        local_rank: int = 0,
        audio: bool = True,
    ):
        """`audio`: the recipe reads the narration, so only clips with narration are read."""
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.use_gpu, self.local_rank, self.audio = use_gpu, local_rank, audio
        self.decoder = resolve_decoder(cfg.decoder, cfg.decode_device, use_gpu, local_rank)
        """The backend and device every worker of this loader decodes with."""
        self.index = load_index(location)
        self.vocabulary = schema.label_vocabulary(self.index)
        self.shards = split_shards(location, self.index, cfg.split, list(cfg.shard_urls), narrated_only=audio)
        self.clip_seconds = float(self.index["clip_seconds"])
        self.current_epoch = 0
        """Epochs this rank has completed: `batches()` reads epoch `current_epoch` next."""
        self._positions: Positions = {}
        self._bad_before = self._padded_before = 0
        self._bad: dict[int, int] = {}
        self._padded: dict[int, int] = {}
        self._frames: dict[int, tuple[int, int]] = {}

    def batches(self, device: torch.device | str = "cpu") -> Iterator[dict]:
        """This rank's batches on `device`, epoch after epoch, from the current position on (endless)."""
        while True:
            for batch in self.epoch(self.current_epoch, self._positions, device):
                w = int(batch["worker"])
                self._positions[w] = (int(batch["loader_pos"]), int(batch["loader_batches"]))
                self._bad[w], self._padded[w] = int(batch["bad_samples"]), int(batch["padded_samples"])
                self._frames[w] = (int(batch["frames_decoded"]), int(batch["frames_used"]))
                yield batch
            self._bad_before, self._padded_before = self.sample_counts()
            self.current_epoch += 1
            self._positions, self._bad, self._padded, self._frames = {}, {}, {}, {}

    def sample_counts(self) -> tuple[int, int]:
        """(bad samples skipped, padded samples repeated) on this rank over the run so far."""
        return self._bad_before + sum(self._bad.values()), self._padded_before + sum(self._padded.values())

    def frames_ratio(self) -> float:
        """Frames the decoder decoded per frame used, this epoch so far (NaN before the first batch)."""
        decoded = sum(d for d, _ in self._frames.values())
        used = sum(u for _, u in self._frames.values())
        return decoded / used if used else float("nan")

    def state_dict(self) -> dict:
        """Where this rank's loader is: epoch, layout, each worker's position, sample counts (JSON-able)."""
        bad, padded = self.sample_counts()
        return {
            "epoch": self.current_epoch,
            "world_size": self.world_size,
            "workers": self.cfg.loader_workers,
            "positions": {str(w): list(p) for w, p in self._positions.items()},
            "bad": bad,
            "padded": padded,
            "plan": self.plan_key(),
        }

    def plan_key(self) -> str:
        """What a saved position depends on besides the layout: a change reads another order."""
        c = self.cfg
        what = [
            c.seed,
            c.interleave,
            c.batch_size,
            c.resample,
            c.split,
            [(s.name, s.clips) for s in self.shards],
        ]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def load_state_dict(self, saved: dict) -> None:
        """Continue from `state_dict()`'s output; another rank/worker layout restarts its epoch.

        Positions index each worker's stream of the plan, and the plan depends on the world size,
        the worker count and `plan_key()`, so a position saved under another means nothing here
        (checkpoints from before the key existed restart their epoch too).
        """
        self.current_epoch = int(saved.get("epoch", 0))
        layout = (saved.get("world_size"), saved.get("workers"))
        same_layout = layout == (self.world_size, self.cfg.loader_workers)
        same_plan = saved.get("plan") == self.plan_key()
        plan_note = (
            ""
            if same_plan
            else " and another read plan (data.seed, interleave, batch_size, resample, split or shards)"
        )
        if saved.get("positions") and not (same_layout and same_plan):
            log.warning(
                "loader position of epoch %d was saved with %s ranks x %s workers, now %d x %d%s: "
                "the epoch restarts from its beginning",
                self.current_epoch,
                *layout,
                self.world_size,
                self.cfg.loader_workers,
                plan_note,
            )
        same_layout = same_layout and same_plan
        positions = saved.get("positions", {}) if same_layout else {}
        self._positions = {int(w): (int(p[0]), int(p[1])) for w, p in positions.items()}
        self._bad_before, self._padded_before = int(saved.get("bad", 0)), int(saved.get("padded", 0))
        self._bad, self._padded, self._frames = {}, {}, {}

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of `epoch` (identical on every rank)."""
        return plan_epoch(
            [s.clips for s in self.shards],
            epoch,
            self.cfg.seed,
            self.world_size,
            self.cfg.loader_workers,
            self.cfg.batch_size,
            resample=self.cfg.resample,
            stream_units=self.cfg.interleave,
        )

    def epoch(
        self,
        epoch: int,
        positions: Positions | None = None,
        device: torch.device | str = "cpu",
        finish_in_workers: bool | None = None,
    ) -> Iterable[dict]:
        """This rank's batches of `epoch` on `device`, continuing each worker's stream from `positions`.

        The batches are finished (crop, float, jitter, log-mel) in the workers when `device` is the
        CPU and on `device` otherwise, unless `finish_in_workers` says where.
        """
        on_cpu = torch.device(device).type == "cpu"
        in_workers = on_cpu if finish_in_workers is None else finish_in_workers
        dataset = RankEpoch(
            self.cfg,
            self.shards,
            self.plan(epoch),
            self.rank,
            self.clip_seconds,
            positions,
            finish_in_worker=in_workers,
            decoder=self.decoder,
            classes=len(self.vocabulary.classes),
            audio=self.audio,
        )
        workers = self.cfg.loader_workers
        on_gpu = self.decoder.on_gpu
        batches = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            # CUDA (decoding on the GPU) cannot run in forked workers; each spawned worker holds
            # a CUDA context and decoder of its own on the training GPU (README, "Decoders").
            multiprocessing_context="spawn" if on_gpu and workers > 0 else None,
            pin_memory=self.use_gpu and not on_gpu,
        )
        return batches if in_workers else map(BatchFinisher(self.cfg, device), batches)
