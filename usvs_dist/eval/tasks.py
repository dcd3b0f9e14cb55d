"""The downstream tasks on one set of encoders, as flat metric dicts (plus figures' data).

Metric names: planes/{video,image}/{linear,finetune}/{precision,recall,f1}[_std],
saliency/{kld,sim,nss,cc}[_std], retrieval/{v2a,a2v}_r{1,5,10}.
"""

from __future__ import annotations

import torch

from usvs_dist.eval.clips import ClipSet
from usvs_dist.eval.encoders import Encoders
from usvs_dist.eval.metrics import recall_at_k
from usvs_dist.eval.probe import features, plane_detection
from usvs_dist.eval.saliency import saliency

TASKS = ("planes", "saliency", "retrieval")


def planes(enc: Encoders, clips: ClipSet, protocols=("linear", "finetune")) -> tuple[dict[str, float], dict]:
    """Plane detection with every visual encoder present; (metrics, {(modality, protocol): confusion})."""
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


def gaze_saliency(enc: Encoders, clips: ClipSet) -> tuple[dict[str, float], tuple | None]:
    """Saliency with the eval.saliency_encoder; (metrics, (rows, predictions, truths) of examples)."""
    modality = enc.cfg.eval.saliency_encoder
    if modality not in enc.encoders:
        raise ValueError(
            f"eval.saliency_encoder={modality}: {enc.source} has no {modality} encoder "
            f"(it has {', '.join(enc.encoders)})"
        )
    inputs, points = (
        (clips.video, clips.gaze) if modality == "video" else (clips.image, clips.image_gaze[:, None])
    )
    result = saliency(enc.encoders[modality], inputs, points, clips.scan, enc.cfg.eval)
    examples = result.pop("examples")
    return {f"saliency/{k}": v for k, v in result.items() if k not in ("clips", "folds")}, examples


def _project(head: torch.nn.Module, feat_NF: torch.Tensor) -> torch.Tensor:
    param = next(head.parameters())
    return head.eval()(feat_NF.to(param.device, param.dtype)).float().cpu()


def retrieval(enc: Encoders, clips: ClipSet) -> dict[str, float]:
    """Video->audio and audio->video recall@1/5/10 in the shared latent."""
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
