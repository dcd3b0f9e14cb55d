"""Evaluation report: pretrained vs randomly initialised encoders, the gain, and figures."""

from __future__ import annotations

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


def gains(trained: dict[str, float], random: dict[str, float]) -> dict[str, float]:
    """pretrained - random for every metric both have (std columns excluded); for KLD, random - pretrained."""
    out = {}
    for name, value in trained.items():
        if name.endswith("_std") or name not in random:
            continue
        out[name] = random[name] - value if lower_is_better(name) else value - random[name]
    return out


def markdown(
    trained: dict[str, float],
    random: dict[str, float],
    source: str,
    sets: dict[str, str],
    seconds: dict[str, dict[str, float]] | None = None,
) -> str:
    """The report: one row per metric, pretrained (± std over folds), random, gain (positive = better);
    then, with `seconds` ({task: {"pretrained": s, "random": s}}), each task's wall time."""
    gain = gains(trained, random)
    lines = [
        f"# Downstream evaluation of {source}",
        "",
        *[f"- {task}: {desc}" for task, desc in sets.items()],
        "",
        "| metric | pretrained | random init | gain |",
        "| --- | --- | --- | --- |",
    ]
    for name in sorted(gain):
        std = trained.get(f"{name}_std")
        rstd = random.get(f"{name}_std")
        shown = f"{trained[name]:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        rshown = f"{random[name]:.4f}" + (f" ± {rstd:.4f}" if rstd is not None else "")
        lines.append(f"| {name} | {shown} | {rshown} | {gain[name]:+.4f} |")
    lines += ["", "Gain: pretrained - random (for KLD: random - pretrained), so positive is better."]
    if seconds:
        lines += ["", "| task | wall time, pretrained | wall time, random init |", "| --- | --- | --- |"]
        for task, took in seconds.items():
            shown = [f"{took[side]:.1f} s" if side in took else "-" for side in ("pretrained", "random")]
            lines.append(f"| {task} | {' | '.join(shown)} |")
        lines += ["", "Wall time: the task's run on each set of encoders (loading clips not included)."]
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
