"""Paper-size encoders' state dicts in the layout torchvision's own constructors load strictly.

`r2plus1d_18` and `resnet18` keep torchvision's key names (models/video.py, models/image.py), so
two things separate their state dicts from what `torchvision.models.video.r2plus1d_18()` and
`torchvision.models.resnet18()` load with strict=True:
- the classifier: ours is Identity, torchvision's a Linear(512, 400 or 1000). A zero `fc` of
  that shape is added; it is untrained (replace it, or set `model.fc = nn.Identity()` after
  loading to get the 512-d features our encoders give).
- a grey stem (data.channels=1): its first conv takes one channel. It is expanded to three with
  each RGB kernel W / 3, so conv([x, x, x], [W/3, W/3, W/3]) = conv(x, W): grey repeated into R, G
  and B gives the grey encoder's output exactly (the inverse of weights.rgb_stem_to_grey).
"""

from __future__ import annotations

import torch
from torch import nn

TORCHVISION_ENCODERS = {"r2plus1d_18": ("stem.0.weight", 400), "resnet18": ("conv1.weight", 1000)}
"""Our encoder name -> (first conv's key, classes of torchvision's classifier)."""
FEATURES = 512
"""Feature size of both encoders (the classifier's input)."""


def torchvision_state_dict(name: str, encoder: nn.Module, modality: str) -> dict[str, torch.Tensor]:
    """`encoder`'s state dict as torchvision's constructor of `name` loads it with strict=True.

    Raises:
        ValueError: `name` is not one of torchvision's architectures (a tiny encoder).
    """
    if name not in TORCHVISION_ENCODERS:
        raise ValueError(
            f"model.{modality}={name} is not a torchvision architecture: --format torchvision exports "
            f"only {', '.join(TORCHVISION_ENCODERS)} (use --format native)"
        )
    stem, classes = TORCHVISION_ENCODERS[name]
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    weight = state[stem]
    if weight.shape[1] == 1:
        state[stem] = weight.repeat(1, 3, *([1] * (weight.dim() - 2))) / 3
    elif weight.shape[1] != 3:
        raise ValueError(f"{name}: first conv takes {weight.shape[1]} channels, expected 1 or 3")
    state["fc.weight"] = torch.zeros(classes, FEATURES, dtype=weight.dtype)
    state["fc.bias"] = torch.zeros(classes, dtype=weight.dtype)
    return state
