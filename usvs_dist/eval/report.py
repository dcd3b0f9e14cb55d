"""Evaluation report: pretrained vs its baselines (random init, and weights init when model.*_weights
name files), the gains, the scans evaluated (hashed ids only), and figures."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

LOWER_IS_BETTER = ("kld",)
"""Last parts of metric names where lower is better (saliency/{protocol}/kld)."""


def lower_is_better(name: str) -> bool:
    """Whether a lower value of metric `name` is better (KLD under any saliency protocol)."""
    return name.rsplit("/", 1)[-1] in LOWER_IS_BETTER


SCAN_HASH = re.compile(r"[0-9a-f]{16}")
"""A scan id as `sharding build` writes it: 16 hex digits of a salted HMAC."""


def gains(trained: dict[str, float], random: dict[str, float]) -> dict[str, float]:
    """pretrained - baseline for every metric both have (std columns excluded); for KLD,
    baseline - pretrained."""
    out = {}
    for name, value in trained.items():
        if name.endswith("_std") or name not in random:
            continue
        out[name] = random[name] - value if lower_is_better(name) else value - random[name]
    return out


def scan_id(scan: str) -> str:
    """A scan id fit for a report: the build's salted hash as it is; anything else (shards from
    another writer could hold names) hashed again, so no raw identifier reaches the report."""
    if SCAN_HASH.fullmatch(scan):
        return scan
    return "h" + hashlib.sha256(scan.encode()).hexdigest()[:15]


def _cell(metrics: dict[str, float], name: str) -> str:
    if name not in metrics:
        return "—"
    std = metrics.get(f"{name}_std")
    return f"{metrics[name]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def scans_section(used: dict[str, dict[str, tuple[int, list[str]]]]) -> list[str]:
    """Lines naming, per evaluation set and split, its clip and scan counts and hashed scan ids."""
    lines = ["## Scans evaluated", ""]
    for label, splits in used.items():
        for split, (clips, scans) in splits.items():
            ids = ", ".join(sorted(scan_id(s) for s in scans))
            lines.append(f"- {label}, split {split}: {len(scans)} scans, {clips} clips; scans: {ids}")
    lines += ["", "Scan ids are the salted hashes the shards carry; no path or name of a scan."]
    return lines


def times_section(seconds: dict[str, dict[str, float]], init_label: str = "weights init") -> list[str]:
    """Lines of a table of each task's wall time per set of encoders (clip loading not included)."""
    sides = {"pretrained": "pretrained", "random": "random init", "init": init_label}
    present = [side for side in sides if any(side in took for took in seconds.values())]
    lines = [
        "| task | " + " | ".join(f"wall time, {sides[side]}" for side in present) + " |",
        "| " + " | ".join("---" for _ in range(len(present) + 1)) + " |",
    ]
    for task, took in seconds.items():
        shown = [f"{took[side]:.1f} s" if side in took else "—" for side in present]
        lines.append(f"| {task} | {' | '.join(shown)} |")
    return lines + ["", "Wall time: the task's run on each set of encoders (loading clips not included)."]


def markdown(
    trained: dict[str, float],
    random: dict[str, float],
    source: str,
    sets: dict[str, str],
    init: dict[str, float] | None = None,
    *,
    init_label: str = "weights init",
    baselines: Sequence[str] = (),
    used: dict[str, dict[str, tuple[int, list[str]]]] | None = None,
    seconds: dict[str, dict[str, float]] | None = None,
) -> str:
    """The report: one row per metric with pretrained (± std over folds), random init, the weights
    init when `init` is given, and the gains over each (positive = better); "—" where a baseline
    has no such metric. `baselines`: lines saying what the baselines are; `used`: the scans;
    `seconds` ({task: {encoder set: s}}): each task's wall time per set of encoders."""
    gain = gains(trained, random)
    gain_init = gains(trained, init) if init is not None else {}
    header = ["metric", "pretrained", "random init"]
    header += [init_label, "gain vs random", f"gain vs {init_label}"] if init is not None else ["gain"]
    lines = [
        f"# Downstream evaluation of {source}",
        "",
        *[f"- {task}: {desc}" for task, desc in sets.items()],
        *[f"- {line}" for line in baselines],
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for name in sorted(gain):
        row = [name, _cell(trained, name), _cell(random, name)]
        if init is not None:
            vs_init = f"{gain_init[name]:+.4f}" if name in gain_init else "—"
            row += [_cell(init, name), f"{gain[name]:+.4f}", vs_init]
        else:
            row.append(f"{gain[name]:+.4f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Gain: pretrained - baseline (for KLD: baseline - pretrained), so positive is better."]
    if seconds:
        lines += ["", *times_section(seconds, init_label)]
    if used:
        lines += ["", *scans_section(used)]
    return "\n".join(lines) + "\n"


def confusion_figure(confusion_KK: torch.Tensor, title: str, path: Path, classes: tuple[str, ...]) -> Path:
    """Row-normalised confusion matrix with the vocabulary's class names."""
    c = confusion_KK.double()
    shown = c / c.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def saliency_figure(
    frames: torch.Tensor, predictions: torch.Tensor, truths: torch.Tensor, path: Path
) -> Path:
    """Each example's frame, predicted map and ground-truth map side by side."""
    n = len(predictions)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        for ax, img, name in zip(
            axes[i],
            (frames[i], predictions[i], truths[i]),
            ("frame", "predicted", "ground truth"),
            strict=True,
        ):
            ax.imshow(img.numpy(), cmap="gray" if name == "frame" else "inferno")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
