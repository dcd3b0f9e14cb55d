"""Where evaluation runs: `auto`, `cpu` or `cuda` resolved to a torch.device, and the precision of
forward passes there (bf16 autocast on CUDA, float32 on the CPU).

Encoders are moved to the device once; inputs move batch by batch (decoded clips stay in CPU
memory); features come back to the CPU as float32, so probes and metrics see the same tensors
wherever the encoders ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")
"""What `eval.device` and `--device` accept."""


def resolve_device(name: str, key: str = "eval.device") -> torch.device:
    """`auto`: CUDA when torch sees a device, else the CPU; `cuda` without one is a ValueError
    naming `key` (the config key or CLI flag the name came from)."""
    if name not in DEVICES:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}=cuda: torch sees no CUDA device on this machine; use cpu or auto")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without any)."""
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


@contextlib.contextmanager
def autocast(device: torch.device | str) -> Iterator[None]:
    """bf16 autocast on CUDA (no GradScaler needed: bf16 has float32's range); nothing on the CPU,
    where results must equal plain float32 ones."""
    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield
