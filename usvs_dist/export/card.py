"""`model_card.md` of an export: what the encoders are, how they were trained, how to load them.

Written from the run's config alone: no path, shard location, scan or run identifier appears
(the data are described by kind and settings, never by where they lie).
"""

from __future__ import annotations

from typing import Any

from usvs_dist.config import RootConfig

PAPERS = {
    "usvs2020": "J. Jiao, Y. Cai, M. Alsharid, L. Drukker, A. T. Papageorghiou, J. A. Noble. "
    "*Self-supervised Contrastive Video-Speech Representation Learning for Ultrasound.* MICCAI 2020.",
    "isbi2020": "J. Jiao, R. Droste, L. Drukker, A. T. Papageorghiou, J. A. Noble. *Self-supervised "
    "Representation Learning for Ultrasound Video.* ISBI 2020.",
    "dual2024": "M. Gridach, M. Alsharid, J. Jiao, L. Drukker, A. T. Papageorghiou, J. A. Noble. *Dual "
    "Representation Learning From Fetal Ultrasound Video and Sonographer Audio.* ISBI 2024.",
    "awcl2022": "Z. Fu, J. Jiao, R. Yasrab, L. Drukker, A. T. Papageorghiou, J. A. Noble. *Anatomy-Aware "
    "Contrastive Representation Learning for Fetal Ultrasound.* ECCV 2022 Workshops.",
    "custom": "a custom weighting of the loss terms of the papers above (objective.terms).",
}
"""Recipe -> the paper it follows (docs/methods.md has the full references)."""
ARCHITECTURES = {
    "r2plus1d_18": "R(2+1)D-18 (Tran et al., CVPR 2018), torchvision's layout, 512-d features",
    "tiny_r2plus1d": "a CPU-size R(2+1)D: one (2+1)D residual block per stage",
    "tiny3d": "four plain 3D convolution blocks (a CPU-size test encoder)",
    "cnn14": "CNN14 (Kong et al., PANNs, 2020) over log-mel, 2048-d features",
    "tiny_cnn14": "a CPU-size CNN14",
    "tiny2d": "four plain 2D convolution blocks over log-mel (a CPU-size test encoder)",
    "resnet18": "ResNet-18 (He et al., CVPR 2016), torchvision's layout, 512-d features",
    "tiny_resnet": "a CPU-size ResNet: one basic block per stage",
}


def _data(cfg: RootConfig) -> str:
    if not cfg.data.shards:
        return (
            "the project's synthetic phantom (generated fetal-ultrasound-like scans with narration; "
            f"{cfg.phantom.scans} scans); no patient data."
        )
    return (
        f"the `{cfg.data.split}` split of a set of ultrasound scan clips with sonographer narration, "
        "cut into WebDataset shards (`sharding build`); which set is not recorded here. Scans are "
        "split by patient, so the held-out splits share no patient with training."
    )


def model_card(
    cfg: RootConfig,
    entries: dict[str, dict[str, Any]],
    step: int | None,
) -> str:
    """The card's Markdown; `entries` are export.json's encoders, `step` the checkpoint's (None: unknown)."""
    objective, train, data = cfg.objective, cfg.train, cfg.data
    lines = ["# usvs_dist pretrained encoders", ""]
    lines += ["## Encoders", ""]
    for m, e in entries.items():
        head = f"; projection head to {cfg.model.embed_dim}-d in `{e['head']}`" if e.get("head") else ""
        lines.append(
            f"- **{m}**: `{e['name']}`, {ARCHITECTURES.get(e['name'], e['name'])}; weights `{e['weights']}` "
            f"({e['layout']} layout), output [B, {e['out_features']}]{head}."
        )
    if any(e["layout"] == "torchvision" for e in entries.values()):
        lines += [
            "",
            "Torchvision layout: the state dict loads with `strict=True` into torchvision's own "
            "constructor. Its `fc.weight`/`fc.bias` are zeros of torchvision's classifier shape, "
            "**untrained**: replace `fc` (or set `model.fc = torch.nn.Identity()`) to get the "
            "pretrained 512-d features. A grey-trained stem was expanded to 3 channels with each RGB "
            "kernel equal to the grey kernel / 3, so grey frames repeated into R, G and B give exactly "
            "the grey encoder's output.",
        ]
    steps = f"{step} optimizer steps" if step is not None else f"{train.steps} optimizer steps (configured)"
    lines += [
        "",
        "## Training",
        "",
        f"- Recipe `{objective.recipe}`: {PAPERS.get(objective.recipe, objective.recipe)}",
        "- Self-supervised: no labels are used by the loss"
        + (" (except plane labels for anatomy-aware positives)." if objective.recipe == "awcl2022" else "."),
        f"- {steps}, {data.batch_size} clips per rank x {train.num_workers} ranks x "
        f"{train.grad_accum_steps} accumulation steps per step; optimizer `{cfg.optim.name}`, "
        f"learning rate {cfg.optim.lr:g}.",
        f"- Data: {_data(cfg)}",
        f"- Clips: {data.num_frames} frames of {data.frame_size}x{data.frame_size}, "
        f"{'grey' if data.channels == 1 else 'grey repeated into RGB'}; narration as "
        f"{data.n_mels}-bin log-mel at {data.sample_rate} Hz.",
        "",
        "## Input",
        "",
        "`preprocessing.json` states each encoder's input: shape, frame sampling, resize, scaling to "
        "[0, 1] (no mean/std normalisation), and the log-mel settings of audio. Inputs prepared "
        "otherwise give features the encoders were not trained on.",
        "",
        "## Intended use",
        "",
        "Research: frozen features or fine-tuning for fetal-ultrasound tasks (standard-plane "
        "detection, gaze saliency, video-narration retrieval), as `python -m usvs_dist.evaluate` does.",
        "",
        "## Limitations",
        "",
        "- Not a medical device, not validated for clinical use; outputs are features, not diagnoses.",
        "- Trained on one kind of data (above) at the sizes above; other probes, machines, presets, "
        "frame sizes or frame rates shift the input distribution.",
        "- Self-supervised features reflect whatever the data share, artefacts and on-screen text "
        "included; evaluate on held-out patients before relying on them.",
        "",
        "## Loading",
        "",
        "```python",
        "from usvs_dist import load_encoder",
        "",
        f'encoder, prep = load_encoder("path/to/this/folder", "{next(iter(entries))}")',
        "```",
        "",
        "Without usvs_dist, with safetensors and torch only:",
        "",
        "```python",
        "from safetensors.torch import load_file",
        "",
        f'state = load_file("{next(iter(entries))}_encoder.safetensors")',
        "```",
    ]
    if entries.get("video", {}).get("layout") == "torchvision":
        lines += [
            "",
            "```python",
            "import torch, torchvision",
            "from safetensors.torch import load_file",
            "",
            "model = torchvision.models.video.r2plus1d_18()",
            'model.load_state_dict(load_file("video_encoder.safetensors"), strict=True)',
            "model.fc = torch.nn.Identity()  # fc is untrained",
            "```",
        ]
    return "\n".join(lines) + "\n"
