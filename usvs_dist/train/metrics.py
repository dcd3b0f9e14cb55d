"""MetricsWindow: the loss parts of one optimizer step's micro-steps, and the training-step clock."""

from __future__ import annotations

import resource
import time

import torch

from usvs_dist.data.pipeline import EpochLoader
from usvs_dist.data.scan_mix import same_scan_pair_share, scan_code
from usvs_dist.dist import collectives
from usvs_dist.train.state import TrainState


class MetricsWindow:
    """Sums a rank's parts over the micro-steps of an optimizer step; averages them over ranks.

    The clock measures training only: `restart_clock()` after evaluating or saving leaves that
    time out of the next step's clips/s.
    """

    def __init__(self, grad_accum_steps: int, global_batch: int, device: torch.device):
        self.accum, self.global_batch, self.device = grad_accum_steps, global_batch, device
        self.parts: dict[str, torch.Tensor] = {}
        self.scans: list[str] = []
        """Scan ids of this rank's last micro-batch (whose global batch the losses contrasted)."""
        self.micro_steps = 0
        self.step_seconds = float("nan")
        self._tick = time.perf_counter()

    def add(self, parts: dict[str, torch.Tensor], scans: list[str]) -> bool:
        """Add one micro-step's parts and its batch's scan ids; True when DeepSpeed stepped the optimizer."""
        self.scans = list(scans)
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v / self.accum
        self.micro_steps += 1
        if self.micro_steps % self.accum:
            return False
        now = time.perf_counter()
        self.step_seconds, self._tick = now - self._tick, now
        return True

    def restart_clock(self) -> None:
        """Start the next step's clock now (after work that is not a training step)."""
        self._tick = time.perf_counter()

    def loss(self) -> float:
        """This step's loss, averaged over ranks (a collective: every rank calls it)."""
        return collectives.all_reduce_mean(self.parts["loss"]).item()

    def summary(self, loader: EpochLoader, state: TrainState, lr: float) -> dict[str, float]:
        """The step's logged metrics: parts averaged over ranks, throughput, loader health (collective)."""
        means = {k: collectives.all_reduce_mean(v).item() for k, v in self.parts.items()}
        bad, padded = loader.sample_counts()
        counts = torch.tensor([float(bad), float(padded), loader.frames_ratio()], device=self.device)
        bad_mean, padded_mean, frames_ratio = collectives.all_reduce_mean(counts).tolist()
        world = collectives.world_size()
        # ru_maxrss is in KiB on Linux: the largest resident set any rank's training process reached
        # so far (its DataLoader workers are processes of their own, not counted).
        peak_kib = torch.tensor(
            [float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)], device=self.device
        )
        codes = torch.tensor([scan_code(s) for s in self.scans], dtype=torch.int64, device=self.device)
        global_scans = [str(c) for c in collectives.gather_nograd(codes).tolist()]
        memory = {"peak_rss_mib": collectives.gather_nograd(peak_kib).max().item() / 1024}
        if self.device.type == "cuda":
            peak = torch.tensor([float(torch.cuda.max_memory_allocated(self.device))], device=self.device)
            memory["peak_gpu_mib"] = collectives.gather_nograd(peak).max().item() / 2**20
        return {
            "same_scan_pair_share": same_scan_pair_share(global_scans),
            **means,
            "clips_per_s": self.global_batch / self.step_seconds,
            "lr": lr,
            "samples_seen": state.samples,
            "global_batch": self.global_batch,
            "bad_samples": bad_mean * world,
            "padded_samples": padded_mean * world,
            "decode_frames_ratio": frames_ratio,
            "loader_epoch": loader.current_epoch,
            **memory,
        }

    def clear(self) -> None:
        """Forget the parts (after the optimizer step they belong to)."""
        self.parts = {}
