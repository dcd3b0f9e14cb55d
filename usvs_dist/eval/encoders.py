"""Trained encoders for evaluation, from a run's `encoders.pt` and resolved config, and the
baselines of the same architecture: randomly initialised twins (every report subtracts them) and,
where `model.*_weights` name local files, twins initialised from those (ImageNet, Kinetics, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from usvs_dist.config import RootConfig, load_config
from usvs_dist.eval.device import module_device
from usvs_dist.models import ENCODERS, build_encoder
from usvs_dist.models.heads import ProjectionHead
from usvs_dist.models.weights import load_encoder_weights

ENCODERS_FILE = "encoders.pt"
"""In a checkpoint: plain state dicts `{modality}_encoder`, `{modality}_head`, ... (see models)."""
CONFIG_FILE = "config.yaml"
"""In a checkpoint: the run's resolved config (the architecture to rebuild)."""
RUN_FILE = "run.json"
"""In a checkpoint: {"mlflow_run_id", "tracking_uri"} of the run that wrote it."""


@dataclass
class Encoders:
    """Encoders by modality and their projection heads (when the recipe trained one)."""

    cfg: RootConfig
    encoders: dict[str, nn.Module]
    heads: dict[str, nn.Module]
    source: str

    def eval(self) -> Encoders:
        """All modules in inference mode."""
        for module in [*self.encoders.values(), *self.heads.values()]:
            module.eval()
        return self

    def to(self, device: torch.device | str) -> Encoders:
        """All modules moved to `device` (once: tasks then move only their inputs, batch by batch)."""
        for module in [*self.encoders.values(), *self.heads.values()]:
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the encoders are (the CPU when built; see `to`)."""
        return module_device(next(iter(self.encoders.values())))


def build_encoders(
    cfg: RootConfig, state: dict[str, dict[str, torch.Tensor]] | None, source: str
) -> Encoders:
    """Encoders (and heads) named in `state` with its weights, or, with state None, fresh ones of
    the same modalities seeded by eval.seed (the random baseline)."""
    modalities = [m for m in ENCODERS if state is None or f"{m}_encoder" in state]
    encoders, heads = {}, {}
    for m in modalities:
        encoders[m] = build_encoder(cfg, m)
        if state is not None:
            encoders[m].load_state_dict(state[f"{m}_encoder"])
        if state is not None and f"{m}_head" in state:
            heads[m] = ProjectionHead(encoders[m].out_features, cfg.model.embed_dim)
            heads[m].load_state_dict(state[f"{m}_head"])
    return Encoders(cfg, encoders, heads, source).eval()


def random_twin(trained: Encoders) -> Encoders:
    """Randomly initialised encoders and heads of the same architecture, seeded by eval.seed."""
    torch.manual_seed(trained.cfg.eval.seed)
    encoders = {m: build_encoder(trained.cfg, m) for m in trained.encoders}
    heads = {m: ProjectionHead(encoders[m].out_features, trained.cfg.model.embed_dim) for m in trained.heads}
    return Encoders(trained.cfg, encoders, heads, "random init").eval()


def weights_files(cfg: RootConfig, modalities: list[str]) -> dict[str, str]:
    """{modality: model.{modality}_weights} of `modalities` whose setting names a file."""
    return {m: getattr(cfg.model, f"{m}_weights") for m in modalities if getattr(cfg.model, f"{m}_weights")}


def weights_label(files: dict[str, str]) -> str:
    """The weights-init baseline's name: its files' stems (no folder: paths stay out of reports)."""
    return " + ".join(dict.fromkeys(Path(f).stem for f in files.values()))


def weights_twin(trained: Encoders) -> Encoders | None:
    """Encoders of the same architecture loaded from the `model.{modality}_weights` files, for the
    modalities of `trained` that have one (the others are left out); None when none has.

    Projection heads, which such files do not hold, are random as in `random_twin` (seeded by
    eval.seed), for the modalities loaded that `trained` has heads for.
    """
    files = weights_files(trained.cfg, list(trained.encoders))
    if not files:
        return None
    torch.manual_seed(trained.cfg.eval.seed)
    encoders = {}
    for m, path in files.items():
        encoders[m] = build_encoder(trained.cfg, m)
        try:
            load_encoder_weights(encoders[m], path, m)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{exc}; for the weights-init baseline, point model.{m}_weights at the file on this "
                f"machine, or set model.{m}_weights='' to leave that baseline out"
            ) from exc
    heads = {
        m: ProjectionHead(encoders[m].out_features, trained.cfg.model.embed_dim)
        for m in trained.heads
        if m in encoders
    }
    return Encoders(trained.cfg, encoders, heads, f"{weights_label(files)} init").eval()


def from_checkpoint(path: str | Path, config: str | Path | None = None) -> Encoders:
    """Encoders of a training checkpoint folder (encoders.pt + config.yaml) or an encoders.pt file."""
    path = Path(path).expanduser()
    file = path / ENCODERS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"--checkpoint {path}: no {ENCODERS_FILE} there (expected a training checkpoint)"
        )
    config = Path(config) if config else file.parent / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(
            f"--checkpoint {path}: no {CONFIG_FILE} beside it; pass --config with the run's config"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    return build_encoders(load_config(config), state, str(file))
