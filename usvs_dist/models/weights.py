"""Encoder weights from a local file (never downloaded at run time), checked key by key.

Three layouts load besides our own state dicts and `encoders.pt`:
- torchvision's (ImageNet ResNet-18, Kinetics R(2+1)D-18): the paper-size encoders keep its key
  names; the classifier is dropped. For grey input (data.channels=1) the first convolution's RGB
  kernels are summed over colour, which is exact: a conv over grey repeated into R, G and B equals
  the summed kernel over grey, so the grey encoder computes what the RGB one does with channels=3.
- PANNs' CNN14 (Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio
  Pattern Recognition", IEEE/ACM TASLP 2020): renamed into `cnn14`, kernels transposed for our
  mel x time input, bn0 rescaled from dB to our natural-log features, log-mel settings checked.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
from torch import nn

from usvs_dist.models.audio import CNN14

log = logging.getLogger(__name__)
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "fc_audioset.")
"""Keys of a supervised checkpoint's classifier, which the encoders drop (their fc is Identity)."""

PANNS_MARKER = "conv_block1.conv1.weight"
"""A key only PANNs' CNN layout has; its presence selects the PANNs mapping."""
PANNS_FEATURE_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")
"""PANNs' frozen STFT and mel filterbank buffers: usvs_dist computes log-mel in the data pipeline."""
PANNS_LOG_MEL = {
    "Cnn14 (32 kHz)": {
        "data.sample_rate": 32000,
        "data.n_fft": 1024,
        "data.hop_length": 320,
        "data.n_mels": 64,
        "data.f_min": 50.0,
        "data.f_max": 14000.0,
    },
    "Cnn14_16k": {
        "data.sample_rate": 16000,
        "data.n_fft": 512,
        "data.hop_length": 160,
        "data.n_mels": 64,
        "data.f_min": 50.0,
        "data.f_max": 8000.0,
    },
}
"""The log-mel PANNs' CNN14 checkpoints were trained on: the paper's 32 kHz model (Kong et al.
2020: 1024-sample window, hop 320, 64 mel bins over 50-14000 Hz) and the authors' later
16 kHz release (Cnn14_16k: window 512, hop 160, 64 bins over 50-8000 Hz). Both share one key and
shape layout and the file does not say which it is, so a config matching either passes quietly."""
NATURAL_LOG_PER_DB = math.log(10) / 10
"""PANNs' log-mel is 10*log10(power) (dB, ref 1); usvs_dist.data.decode takes log(power + 1e-6).
ln(p) = this * dB(p), so bn0's running mean and variance scale by it and its square, and bn0 maps
our features to what it mapped PANNs' to. What stays different: torchaudio's HTK-scale, unnormalised
mel filters against PANNs' librosa (Slaney) ones shift each bin's level, which bn0's statistics
absorb once training updates them."""
_PANNS_BLOCK = re.compile(r"conv_block(\d+)\.(conv|bn)([12])\.(.+)")
_CONVS_INDEX = {("conv", "1"): 0, ("bn", "1"): 1, ("conv", "2"): 3, ("bn", "2"): 4}
"""Where PANNs' ConvBlock layers sit in our _ConvBlock.convs (ReLUs at 2 and 5)."""


def _state_dict_in(obj: object, role: str, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and f"{role}_encoder" in obj:  # a usvs_dist encoders.pt
        obj = obj[f"{role}_encoder"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # PANNs checkpoints
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{source}: expected a state dict of tensors (or an encoders.pt), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_panns_log_mel(log_mel: dict[str, float], n_mels: int, source: str) -> None:
    """Refuse a mel-bin count PANNs' bn0 cannot take; warn, naming keys, when other settings differ.

    Args:
        log_mel: the encoder's settings by config key (`audio.log_mel_settings`); empty: unknown.
        n_mels: mel bins the checkpoint's bn0 normalises (64 for CNN14).
        source: `model.audio_weights=<path>`, for the messages.
    """
    have = log_mel.get("data.n_mels")
    if have is not None and have != n_mels:
        # bn0 holds one mean and scale per mel bin: another count has no faithful mapping.
        raise ValueError(
            f"{source} is a PANNs CNN14 checkpoint trained on {n_mels} mel bins (bn0 normalises "
            f"each): set data.n_mels={n_mels} (now {have})"
        )
    if not log_mel:
        return
    diffs = {
        name: {k: v for k, v in want.items() if log_mel.get(k) != v} for name, want in PANNS_LOG_MEL.items()
    }
    if not all(diffs.values()):
        return
    # Name the release nearest the data's rate (fewest differing keys on a tie).
    name = min(
        diffs,
        key=lambda n: (
            PANNS_LOG_MEL[n]["data.sample_rate"] != log_mel.get("data.sample_rate"),
            len(diffs[n]),
        ),
    )
    log.warning(
        "%s: PANNs %s was trained on log-mel with %s, but the config sets %s; the weights load, "
        "but its frequency bins and frames mean something else here, so expect to fine-tune",
        source,
        name,
        ", ".join(f"{k}={v:g}" for k, v in diffs[name].items()),
        ", ".join(f"{k}={log_mel.get(k)}" for k in diffs[name]),
    )


def panns_to_cnn14(
    state: dict[str, torch.Tensor], encoder: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """PANNs' CNN14 state dict in our `cnn14` layout (its AudioSet classifier is left to be dropped).

    Renames conv_block{k}.{conv,bn}{1,2} to blocks.{k-1}.convs.{0,1,3,4}; keeps bn0 and fc1; drops
    the STFT/mel buffers. PANNs convolves (time, mel) maps and we convolve (mel, time) ones:
    conv(x^T, W^T) = conv(x, W)^T for a 3x3 kernel with equal padding, and BatchNorm, ReLU, 2x2
    pooling and the head are symmetric in the two axes (mean over mel, max + mean over time in
    both), so transposing each kernel's last two dims makes our forward on X equal PANNs' on X^T
    (exactly when M and F are multiples of 32; see CNN14 on pooling). Transposing the kernels once
    here, rather than the input on every forward, leaves the encoder's layout that of the data.

    Args:
        state: the checkpoint's state dict (already unwrapped from {"model": ...}).
        encoder: the encoder it loads into; must be a CNN14.
        source: `model.audio_weights=<path>`, for the messages.

    Raises:
        ValueError: the encoder is not a CNN14, or data.n_mels differs from the checkpoint's.
    """
    if not isinstance(encoder, CNN14):
        raise ValueError(
            f"{source} is a PANNs CNN14 checkpoint ({PANNS_MARKER}, bn0, fc1): it loads into "
            f"model.audio=cnn14, not {type(encoder).__name__}"
        )
    check_panns_log_mel(encoder.log_mel, state["bn0.weight"].shape[0], source)
    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith(PANNS_FEATURE_PREFIXES):
            dropped.append(key)
            continue
        block = _PANNS_BLOCK.fullmatch(key)
        if block:
            k, kind, which, rest = block.groups()
            key = f"blocks.{int(k) - 1}.convs.{_CONVS_INDEX[kind, which]}.{rest}"
            if kind == "conv":
                value = value.transpose(-1, -2).contiguous()
        elif key == "bn0.running_mean":
            value = value * NATURAL_LOG_PER_DB
        elif key == "bn0.running_var":
            value = value * NATURAL_LOG_PER_DB**2
        out[key] = value
    log.info(
        "%s: PANNs CNN14 layout mapped to cnn14 (kernels transposed to mel x time, bn0 statistics "
        "rescaled from dB to natural log, %d feature-extractor buffers dropped)",
        source,
        len(dropped),
    )
    return out


def _first_conv_weight(encoder: nn.Module) -> str | None:
    """State-dict key of the first convolution registered: the stem that sees the input."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return f"{name}.weight"
    return None


def rgb_stem_to_grey(
    state: dict[str, torch.Tensor], encoder: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """Sum the first conv's RGB kernels over colour when the encoder takes one channel.

    Exact for grey input: conv([x, x, x], W) = conv(x, W_R + W_G + W_B), the same features an RGB
    encoder gives on data.channels=3 (grey repeated). Any other shape difference is left to fail.
    """
    key = _first_conv_weight(encoder)
    expected = encoder.state_dict().get(key) if key else None
    weight = state.get(key) if key else None
    if expected is None or weight is None or weight.dim() < 3:
        return state
    if (
        weight.shape[1] == 3
        and expected.shape[1] == 1
        and weight.shape[:1] + weight.shape[2:] == (expected.shape[:1] + expected.shape[2:])
    ):
        state = {**state, key: weight.sum(dim=1, keepdim=True)}
        log.info("%s: %s summed over its 3 colour channels for data.channels=1", source, key)
    return state


def load_encoder_weights(encoder: nn.Module, path: str, role: str) -> None:
    """Load `path` into `encoder` strictly; errors name the config key, each key and both shapes.

    Args:
        encoder: the built encoder (its classifier already replaced).
        path: a state dict, a {"state_dict": ...} checkpoint, a PANNs {"model": ...} checkpoint,
            or a usvs_dist encoders.pt.
        role: video, audio or image; names the config key `model.{role}_weights`.
    """
    source = f"model.{role}_weights={path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{source}: no such file (weights are read from local files only)")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unsafe-type errors all mean "not a weights file"
        raise ValueError(f"{source}: not a loadable torch weights file ({exc})".splitlines()[0]) from exc
    state = _state_dict_in(obj, role, source)
    if PANNS_MARKER in state:
        state = panns_to_cnn14(state, encoder, source)
    state = rgb_stem_to_grey(state, encoder, source)
    expected = encoder.state_dict()
    dropped = [k for k in state if k not in expected and k.startswith(CLASSIFIER_PREFIXES)]
    unexpected = [k for k in state if k not in expected and k not in dropped]
    missing = [k for k in expected if k not in state]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, encoder {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch at " + "; ".join(mismatched[:5]))
        if any(k in m for m in mismatched[:1] for k in ("stem.0", "conv1", "blocks.0")):
            problems.append("(input channels follow data.channels; RGB weights also load for 1)")
    if missing:
        problems.append(f"{len(missing)} keys missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if problems:
        raise ValueError(f"{source} does not fit model.{role}: " + " ".join(problems))
    encoder.load_state_dict({k: v for k, v in state.items() if k not in dropped})
    if dropped:
        log.info("%s: dropped %d classifier keys (%s...)", source, len(dropped), dropped[0])
