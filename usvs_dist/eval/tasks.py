"""The downstream tasks on one set of encoders, as flat metric dicts (plus figures' data), and
`TASKS`, the registry both the evaluation entry and periodic evaluation during training loop over.

Metric names: planes/{video,image}/{linear,finetune}/{precision,recall,f1}[_std],
saliency/{linear,finetune}/{kld,sim,nss,cc}[_std], retrieval/{v2a,a2v}_r{1,5,10}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from usvs_dist.config import RootConfig
from usvs_dist.eval import report
from usvs_dist.eval.clips import ClipSet, load_clips
from usvs_dist.eval.encoders import Encoders
from usvs_dist.eval.metrics import recall_at_k
from usvs_dist.eval.probe import features, plane_detection
from usvs_dist.eval.saliency import saliency


def planes(enc: Encoders, clips: ClipSet, protocols=("linear", "finetune")) -> tuple[dict[str, float], dict]:
    """Plane detection with every visual encoder present, on the encoders' device; (metrics,
    {(modality, protocol): confusion})."""
    metrics: dict[str, float] = {}
    confusions = {}
    inputs = {"video": clips.video, "image": clips.image}
    for modality in ("video", "image"):
        if modality not in enc.encoders:
            continue
        result = plane_detection(
            enc.encoders[modality],
            inputs[modality],
            clips.image_label,
            clips.scan,
            enc.cfg.eval,
            protocols,
            classes=len(clips.vocabulary.classes),
            device=enc.device,
            desc=f"planes {modality}",
        )
        for protocol in protocols:
            if protocol not in result:
                continue
            confusions[(modality, protocol)] = result[protocol].pop("confusion")
            for name, value in result[protocol].items():
                metrics[f"planes/{modality}/{protocol}/{name}"] = value
    if not confusions:
        raise ValueError(f"{enc.source}: no video or image encoder to detect planes with")
    return metrics, confusions


def gaze_saliency(
    enc: Encoders, clips: ClipSet, protocols=("linear", "finetune")
) -> tuple[dict[str, float], tuple | None]:
    """Saliency with the eval.saliency_encoder under each protocol; (metrics, (rows, predictions,
    truths) of examples of the first protocol run)."""
    modality = enc.cfg.eval.saliency_encoder
    if modality not in enc.encoders:
        raise ValueError(
            f"eval.saliency_encoder={modality}: {enc.source} has no {modality} encoder "
            f"(it has {', '.join(enc.encoders)})"
        )
    inputs, points = (
        (clips.video, clips.gaze) if modality == "video" else (clips.image, clips.image_gaze[:, None])
    )
    encoder, desc = enc.encoders[modality], f"saliency {modality}"
    result = saliency(encoder, inputs, points, clips.scan, enc.cfg.eval, protocols, desc=desc)
    metrics = {
        f"saliency/{protocol}/{name}": value
        for protocol in protocols
        for name, value in result.get(protocol, {}).items()
    }
    return metrics, result["examples"]


def _project(head: torch.nn.Module, feat_NF: torch.Tensor) -> torch.Tensor:
    param = next(head.parameters())
    return head.eval()(feat_NF.to(param.device, param.dtype)).float().cpu()


def retrieval(enc: Encoders, clips: ClipSet) -> dict[str, float]:
    """Video->audio and audio->video recall@1/5/10 in the shared latent (encoders and heads run
    where they are, see `Encoders.to`; the ranking is on the CPU)."""
    if clips.audio is None:
        raise ValueError(f"{enc.source}: retrieval needs the narration, and these clips were read without it")
    missing = [m for m in ("video", "audio") if m not in enc.heads]
    if missing:
        raise ValueError(
            f"{enc.source}: retrieval needs video and audio embeddings; no {' or '.join(missing)} head"
        )
    bs = enc.cfg.eval.batch_size
    with torch.no_grad():
        v = _project(enc.heads["video"], features(enc.encoders["video"], clips.video, bs))
        a = _project(enc.heads["audio"], features(enc.encoders["audio"], clips.audio, bs))
    out = {}
    for name, (q, g) in {"v2a": (v, a), "a2v": (a, v)}.items():
        for k, value in recall_at_k(q, g).items():
            out[f"retrieval/{name}_r{k}"] = value
    return out


@dataclass(frozen=True)
class Clips:
    """The clips some tasks evaluate on: loaded once for all of them."""

    label: str
    """Its line in the report."""
    splits: Callable[[RootConfig], list[str]]
    audio: bool
    """Clips with narration only, and their log-mel; else every clip (video-only scans count)."""
    labelled: bool
    """Its tasks need plane labels from two scans at least (folds are by scan)."""
    describe: Callable[[ClipSet, RootConfig], str]
    """Its line in the report: what was loaded."""
    setting: str = ""
    """The config key that picks its splits (named when they hold no clip)."""

    def load(self, cfg: RootConfig, location: str | Path, max_clips: int) -> ClipSet:
        """Its splits' clips: all, or a scan-stratified sample of `max_clips` (seeded by eval.seed)."""
        try:
            return load_clips(
                cfg.data, location, self.splits(cfg), max_clips, audio=self.audio, seed=cfg.eval.seed
            )
        except ValueError as exc:
            raise ValueError(f"{self.label} ({self.setting or 'splits'}): {exc}") from exc


def _sampled(clips: ClipSet, cfg: RootConfig, max_clips: int) -> str:
    """How the set was chosen, when it was sampled down."""
    if clips.available <= max_clips:
        return ""
    return f", a scan-stratified sample (eval.seed={cfg.eval.seed}) of their {clips.available} clips"


def _describe_planes(clips: ClipSet, cfg: RootConfig) -> str:
    classes = clips.vocabulary.classes
    return (
        f"{len(clips)} clips of {len(set(clips.scan))} scans ({', '.join(cfg.eval.plane_splits)}"
        f"{_sampled(clips, cfg, cfg.eval.max_clips)}), "
        f"{cfg.eval.folds}-fold cross-validation by scan; {len(classes)} classes (clips): "
        + ", ".join(f"{name} ({n})" for name, n in zip(classes, clips.class_counts(), strict=True))
    )


def _describe_narrated(clips: ClipSet, cfg: RootConfig) -> str:
    return (
        f"{len(clips)} clips with narration of {len(set(clips.scan))} scans of the "
        f"{cfg.eval.retrieval_split} split{_sampled(clips, cfg, cfg.eval.max_clips)}"
    )


LABELLED_CLIPS = Clips(
    "planes/saliency",
    lambda cfg: list(cfg.eval.plane_splits),
    False,
    True,
    _describe_planes,
    "eval.plane_splits",
)
NARRATED_CLIPS = Clips(
    "retrieval",
    lambda cfg: [cfg.eval.retrieval_split],
    True,
    False,
    _describe_narrated,
    "eval.retrieval_split",
)


Run = Callable[[Encoders, ClipSet, tuple[str, ...]], tuple[dict[str, float], Any]]
"""(encoders, clips, protocols of planes and saliency) -> (metrics, what its figures are drawn from)."""
Figures = Callable[[Any, ClipSet, Path], list[Path]]
"""(what `run` returned beside the metrics, clips, output folder) -> figure files."""


@dataclass(frozen=True)
class Task:
    """A downstream task: the encoders and heads it needs, the clips it loads, how it runs."""

    run: Run
    clips: Clips
    encoders: tuple[str, ...]
    """Encoders it can run on: it needs one of them at least."""
    heads: tuple[str, ...] = ()
    """Projection heads it needs, all of them."""
    figures: Figures | None = None
    """Figures of the pretrained encoders' run (the entry writes them; training does not)."""
    periodic: bool = True
    """Also run every eval.every training steps, on eval.subset clips (linear protocol only)."""
    needs: Callable[[RootConfig], tuple[str, ...]] | None = None
    """Encoders it needs, all of them, as the config picks them (saliency: eval.saliency_encoder)."""

    def runs_on(self, enc: Encoders) -> bool:
        """Whether `enc` has the encoders and heads the task needs."""
        needed = set(self.needs(enc.cfg)) if self.needs is not None else set()
        return (
            bool(set(self.encoders) & set(enc.encoders))
            and needed <= set(enc.encoders)
            and set(self.heads) <= set(enc.heads)
        )


def _planes_figures(confusions: dict, clips: ClipSet, out: Path) -> list[Path]:
    return [
        report.confusion_figure(
            confusion,
            f"{modality} encoder, {protocol}",
            out / f"confusion_{modality}_{protocol}.png",
            clips.vocabulary.classes,
        )
        for (modality, protocol), confusion in confusions.items()
    ]


def _saliency_figures(examples: tuple | None, clips: ClipSet, out: Path) -> list[Path]:
    if examples is None:
        return []
    rows, pred, truth = examples
    return [report.saliency_figure(clips.image[rows, 0], pred, truth, out / "saliency_examples.png")]


def _saliency(enc: Encoders, clips: ClipSet, protocols: tuple[str, ...]) -> tuple[dict[str, float], Any]:
    return gaze_saliency(enc, clips, protocols)


def _retrieval(enc: Encoders, clips: ClipSet, protocols: tuple[str, ...]) -> tuple[dict[str, float], Any]:
    return retrieval(enc, clips), None


TASKS: dict[str, Task] = {
    "planes": Task(planes, LABELLED_CLIPS, ("video", "image"), figures=_planes_figures),
    "saliency": Task(
        _saliency,
        LABELLED_CLIPS,
        ("video", "image"),
        figures=_saliency_figures,
        periodic=False,
        needs=lambda cfg: (cfg.eval.saliency_encoder,),
    ),
    "retrieval": Task(
        _retrieval,
        NARRATED_CLIPS,
        ("video", "audio"),
        heads=("video", "audio"),
    ),
}
"""Task name -> task, in the order they run and report."""


def periodic_tasks() -> dict[str, Task]:
    """The tasks periodic evaluation runs during training."""
    return {name: task for name, task in TASKS.items() if task.periodic}
