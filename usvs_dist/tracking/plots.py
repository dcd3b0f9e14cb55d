"""Plots logged as run artifacts (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient


def loss_curves(uri: str, run_id: str, out: Path) -> Path | None:
    """PNG of `loss` and every `*_loss` part against step; None when the run logged no loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = MlflowClient(uri)
    names = sorted(k for k in client.get_run(run_id).data.metrics if k == "loss" or k.endswith("_loss"))
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        # A restarted worker group re-logs steps after its checkpoint: keep the latest value per step.
        latest = {m.step: m.value for m in history}
        ax.plot(list(latest), list(latest.values()), label=name, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"run {run_id[:8]}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
