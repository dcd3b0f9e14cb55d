"""The pretraining model: the encoders, projection heads, fusions and classifiers that a recipe's
outputs need (`models.outputs.OUTPUTS`), and their plain state dicts for downstream use.

Shapes: B batch, K sub-clips, F features, D latent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from usvs_dist.config.schema import RootConfig
from usvs_dist.models.encoders import build_encoder
from usvs_dist.models.heads import Fusion, MLPHead, ProjectionHead
from usvs_dist.models.outputs import OUTPUTS, Output, check_outputs, modalities_for
from usvs_dist.models.weights import load_encoder_weights


def _classifier_key(name: str) -> str:
    # "order_logits" -> "order": the module names checkpoints and encoders.pt already use.
    return name.removesuffix("_logits")


class PretrainModel(nn.Module):
    """Encoders by modality, their projection heads, fusions and classifier heads, as a recipe needs."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        embed_dim: int,
        outputs: Iterable[str],
        head_hidden: int = 128,
        subclips: int = 3,
        classes: Mapping[str, int] | None = None,
    ):
        """Args: encoders by modality (at least those the outputs run), the latent size D,
        the outputs to compute (names of OUTPUTS), the classifiers' hidden width, the number K of
        sub-clips of a `subclips` input, and each classifier output's number of classes."""
        super().__init__()
        self.outputs = frozenset(check_outputs(outputs))
        specs = {name: spec for name, spec in OUTPUTS.items() if name in self.outputs}
        classes = dict(classes or {})
        self.encoders = nn.ModuleDict(encoders)
        feat = {m: enc.out_features for m, enc in encoders.items()}
        projected = {s.encoders[0] for s in specs.values() if s.head == "projection"}
        self.projections = nn.ModuleDict({m: ProjectionHead(feat[m], embed_dim) for m in sorted(projected)})
        self.fusions = nn.ModuleDict(
            {
                name: Fusion(feat[s.encoders[0]], feat[s.encoders[1]], embed_dim)
                for name, s in specs.items()
                if s.head == "fusion"
            }
        )
        self.pretext = nn.ModuleDict(
            {
                _classifier_key(name): MLPHead(
                    (subclips if s.subclips else 1) * feat[s.encoders[0]], head_hidden, classes[name]
                )
                for name, s in specs.items()
                if s.head == "classifier"
            }
        )

    def _features(self, spec: Output, inputs: dict[str, torch.Tensor], cache: dict) -> list[torch.Tensor]:
        """Encoder features of each of the output's inputs; an input is encoded once per forward."""
        out = []
        for modality, name in zip(spec.encoders, spec.inputs, strict=True):
            if (modality, name) not in cache:
                x = inputs[name]
                if spec.subclips:
                    B, K = x.shape[:2]
                    cache[modality, name] = self.encoders[modality](x.flatten(0, 1)).view(B, K, -1).flatten(1)
                else:
                    cache[modality, name] = self.encoders[modality](x)
            out.append(cache[modality, name])
        return out

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs by name -> outputs by name (only those this model was built for).

        Inputs (the views OUTPUTS names): video [B, C, T, H, W], audio [B, 1, M, F], image
        [B, C, H, W], image_view1 and image_view2 [B, C, H, W], pretext_clips [B, K, C, T/K, H, W]
        (encoded once for both of its classifiers). Outputs: video, audio, image, va, vi,
        image_view1, image_view2 [B, D] (unnormalised), order_logits [B, P], rotation_logits [B, R].
        """
        cache: dict[tuple[str, str], torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for name, spec in OUTPUTS.items():
            if name not in self.outputs or name in out:
                continue
            if spec.encoded_with:
                # Both views in one pass: BatchNorm sees the pair, as in SimCLR.
                partner = OUTPUTS[spec.encoded_with]
                modality = spec.encoders[0]
                both = torch.cat([inputs[spec.inputs[0]], inputs[partner.inputs[0]]])
                out[name], out[spec.encoded_with] = self.projections[modality](
                    self.encoders[modality](both)
                ).chunk(2)
                continue
            feats = self._features(spec, inputs, cache)
            if spec.head == "projection":
                out[name] = self.projections[spec.encoders[0]](feats[0])
            elif spec.head == "fusion":
                out[name] = self.fusions[name](*feats)
            else:
                out[name] = self.pretext[_classifier_key(name)](feats[0])
        return out


def build_model(cfg: RootConfig, outputs: Iterable[str]) -> PretrainModel:
    """The pretraining model producing `outputs`, with weights from model.*_weights where set."""
    outputs = check_outputs(outputs)
    encoders = {}
    for modality in modalities_for(outputs):
        encoder = build_encoder(cfg, modality)
        weights = getattr(cfg.model, f"{modality}_weights")
        if weights:
            load_encoder_weights(encoder, weights, modality)
        encoders[modality] = encoder
    classes = {
        name: OUTPUTS[name].classes(cfg.objective) for name in outputs if OUTPUTS[name].head == "classifier"
    }
    return PretrainModel(
        encoders,
        cfg.model.embed_dim,
        outputs,
        head_hidden=cfg.model.head_hidden,
        subclips=cfg.objective.pretext.subclips,
        classes=classes,
    )


def encoder_state_dicts(model: PretrainModel) -> dict[str, dict[str, torch.Tensor]]:
    """Plain state dicts for downstream use, free of any wrapper: `{modality}_encoder`,
    `{modality}_head` (projection), `fusion_{va,vi}`, `{order,rotation}_head`."""

    def plain(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    out = {f"{m}_encoder": plain(e) for m, e in model.encoders.items()}
    out.update({f"{m}_head": plain(h) for m, h in model.projections.items()})
    out.update({f"fusion_{n}": plain(f) for n, f in model.fusions.items()})
    out.update({f"{n}_head": plain(h) for n, h in model.pretext.items()})
    return out
