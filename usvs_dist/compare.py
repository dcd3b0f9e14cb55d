"""`python -m usvs_dist.compare [--experiment E] [--parent RUN] [--metric M] [--out DIR]`.

A table of runs — the params that differ between them, and each metric's final and best value —
printed and written as CSV; with --parent (a sweep), plots of the metric against each swept
param and the loss curves of the best runs, logged as artifacts of the parent run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from usvs_dist.tracking import MlflowTracker, resolve_uri  # noqa: E402

SUMMARY_METRICS = ("loss", "eval/retrieval/v2a_r1", "eval/planes/video/linear/f1")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def collect(client: MlflowClient, experiment: str, parent: str | None) -> list:
    """The runs of the experiment, or the children of `parent`, oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    query = f"tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=5000)
    if not runs:
        raise ValueError(
            f"no runs in experiment {experiment!r}" + (f" under parent {parent}" if parent else "")
        )
    return sorted(runs, key=lambda r: r.info.start_time)


def table(
    client: MlflowClient, runs: list, metrics: tuple[str, ...], mode: dict[str, str]
) -> tuple[list[str], list[dict]]:
    """(columns, rows): run name and status, the differing params, final and best of each metric."""
    keys = sorted({k for r in runs for k in r.data.params})
    # A run name differs by construction; it is already the first column.
    differing = [k for k in keys if k != "train.run_name" and len({r.data.params.get(k) for r in runs}) > 1]
    rows = []
    for r in runs:
        row = {
            "run": r.info.run_name,
            "status": r.info.status,
            **{k: r.data.params.get(k, "") for k in differing},
        }
        for m in metrics:
            history = sorted(client.get_metric_history(r.info.run_id, m), key=lambda x: x.step)
            values = [h.value for h in history]
            row[f"{m} final"] = values[-1] if values else None
            row[f"{m} best"] = (
                (min(values) if mode.get(m, "min") == "min" else max(values)) if values else None
            )
            row[f"{m} last step"] = history[-1].step if history else None
        rows.append(row)
    columns = ["run", "status", *differing] + [
        f"{m} {s}" for m in metrics for s in ("final", "best", "last step")
    ]
    return columns, rows


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(columns: list[str], rows: list[dict], print_fn=print) -> None:
    """A plain-text table sized to its contents."""
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print_fn("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print_fn("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def plots(
    client: MlflowClient, runs: list, swept: list[str], metric: str, mode: str, out: Path
) -> list[Path]:
    """Metric (best per run) against each swept param, and the loss curves of the top 5 runs."""
    files = []
    scored = []
    for r in runs:
        values = [h.value for h in client.get_metric_history(r.info.run_id, metric)]
        if values:
            scored.append((r, min(values) if mode == "min" else max(values)))
    for key in swept:
        points = [(_number(r.data.params.get(key)), v) for r, v in scored]
        points = [(x, v) for x, v in points if x is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.scatter([x for x, _ in points], [v for _, v in points])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} ({mode})")
        fig.tight_layout()
        path = out / f"{metric.replace('/', '_')}_vs_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    top = sorted(scored, key=lambda t: t[1], reverse=mode == "max")[:5]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r, _ in top:
        history = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda h: h.step)
        ax.plot([h.step for h in history], [h.value for h in history], label=r.info.run_name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if top:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "loss_curves_top.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [*files, path]


def main(argv: list[str] | None = None) -> int:
    """CLI entry; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m usvs_dist.compare", description=__doc__)
    p.add_argument("--experiment", default="usvs_dist")
    p.add_argument("--parent", help="a sweep's parent run id: compare its trials, log plots to it")
    p.add_argument("--metric", default="loss", help="metric the plots rank runs by")
    p.add_argument("--mode", choices=("min", "max"), default=None, help="default: min for loss, else max")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLFLOW_TRACKING_URI wins when set")
    p.add_argument("--out", default="compare_out")
    args = p.parse_args(argv)
    uri = resolve_uri(args.tracking_uri)
    client = MlflowClient(uri)
    mode = args.mode or ("min" if "loss" in args.metric else "max")
    try:
        runs = collect(client, args.experiment, args.parent)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = tuple(dict.fromkeys((*SUMMARY_METRICS, args.metric)))
    modes = {m: ("min" if "loss" in m else "max") for m in metrics} | {args.metric: mode}
    columns, rows = table(client, runs, metrics, modes)
    print_table(columns, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'runs.csv'}")
    if args.parent:
        swept = [c for c in columns if c not in ("run", "status") and " " not in c]
        files = [out / "runs.csv", *plots(client, runs, swept, args.metric, mode, out)]
        tracker = MlflowTracker(uri, args.parent)
        for path in files:
            tracker.log_artifact(path, "compare")
        tracker.close()
        print(f"logged {len(files)} files to MLflow run {args.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
