"""Pretrained weight layouts: PANNs' CNN14 into `cnn14`, torchvision's into grey and RGB encoders."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.video import r2plus1d_18 as tv_r2plus1d_18

from usvs_dist.config import load_config
from usvs_dist.models import ENCODERS
from usvs_dist.models.weights import load_encoder_weights

DATA = load_config().data  # 16 kHz, n_fft 512, hop 160, 64 mel bins over 50-8000 Hz: Cnn14_16k's
PANNS_32K = ["data.sample_rate=32000", "data.n_fft=1024", "data.hop_length=320", "data.f_max=14000"]


def _panns_state(width: int = 64, n_mels: int = 64, classes: int = 527) -> dict[str, torch.Tensor]:
    """A random state dict in PANNs' Cnn14 layout (key names, shapes, extractor buffers)."""
    g = torch.Generator().manual_seed(0)

    def bn(prefix: str, n: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": 1 + 0.1 * torch.randn(n, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(n, generator=g),
            f"{prefix}.running_var": 1 + 0.1 * torch.rand(n, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(1000),
        }

    state = {
        # frozen STFT and mel filterbank of PANNs' torchlibrosa front end (window 1024, 64 bins)
        "spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024, generator=g),
        "spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024, generator=g),
        "logmel_extractor.melW": torch.rand(513, n_mels, generator=g),
        **bn("bn0", n_mels),
    }
    cin = 1
    for k in range(1, 7):
        cout = width * 2 ** (k - 1)
        for j, c in ((1, cin), (2, cout)):
            state[f"conv_block{k}.conv{j}.weight"] = (
                torch.randn(cout, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
            )
            state.update(bn(f"conv_block{k}.bn{j}", cout))
        cin = cout
    state["fc1.weight"] = torch.randn(cin, cin, generator=g) / cin**0.5
    state["fc1.bias"] = 0.1 * torch.randn(cin, generator=g)
    state["fc_audioset.weight"] = torch.randn(classes, cin, generator=g) / cin**0.5
    state["fc_audioset.bias"] = torch.zeros(classes)
    return state


def _panns_embedding(state: dict[str, torch.Tensor], logmel_B1TM: torch.Tensor) -> torch.Tensor:
    """PANNs' Cnn14.forward in eval mode from the log-mel on, as its pytorch/models.py writes it."""

    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            training=False,
        )

    x = bn(logmel_B1TM.transpose(1, 3), "bn0").transpose(1, 3)
    for k in range(1, 7):
        for j in (1, 2):
            x = F.relu(
                bn(F.conv2d(x, state[f"conv_block{k}.conv{j}.weight"], padding=1), f"conv_block{k}.bn{j}")
            )
        x = F.avg_pool2d(x, (2, 2) if k < 6 else (1, 1))
    x = x.mean(dim=3)  # over mel
    x = x.max(dim=2).values + x.mean(dim=2)  # over time
    return F.relu(F.linear(x, state["fc1.weight"], state["fc1.bias"]))


def _save_panns(state: dict[str, torch.Tensor], path) -> str:
    torch.save({"model": state}, path)  # as PANNs' released .pth files wrap it
    return str(path)


def test_panns_cnn14_checkpoint_loads_into_cnn14_and_gives_panns_embedding(tmp_path, caplog):
    g = torch.Generator().manual_seed(1)
    power_BMF = torch.exp(2 * torch.randn(2, 64, 96, generator=g))  # mel power, 96 frames
    ours_B1MF = torch.log(power_BMF + 1e-6).unsqueeze(1)  # usvs_dist.data.decode's log-mel
    panns_B1TM = 10 * torch.log10(power_BMF.clamp(min=1e-10)).transpose(1, 2).unsqueeze(1)  # PANNs' dB
    state = _panns_state()
    # bn0 statistics of the scale PANNs saw (dB), so that rescaling them matters
    state["bn0.running_mean"] = panns_B1TM.mean(dim=(0, 1, 2)) + torch.randn(64, generator=g)
    state["bn0.running_var"] = panns_B1TM.var(dim=(0, 1, 2)) * (1 + 0.1 * torch.rand(64, generator=g))
    encoder = ENCODERS["audio"]["cnn14"](1, 8, DATA).eval()
    with caplog.at_level(logging.INFO, logger="usvs_dist.models.weights"):
        load_encoder_weights(encoder, _save_panns(state, tmp_path / "Cnn14_16k.pth"), "audio")
    assert "PANNs CNN14 layout mapped to cnn14" in caplog.text
    assert "dropped 2 classifier keys (fc_audioset." in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # settings are Cnn14_16k's

    with torch.no_grad():
        expected = _panns_embedding(state, panns_B1TM)
        got = encoder(ours_B1MF)
    assert expected.shape == (2, 2048) and expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    # The kernel transpose is what makes them agree: kernels loaded as PANNs stores them do not.
    with torch.no_grad():
        for block in encoder.blocks:
            for conv in (block.convs[0], block.convs[3]):
                conv.weight.copy_(conv.weight.transpose(-1, -2).clone())
        assert (encoder(ours_B1MF) - expected).abs().max() > 1e-2 * expected.abs().max()


def test_panns_layout_is_refused_for_other_mel_counts_and_encoders(tmp_path):
    path = _save_panns(_panns_state(width=4), tmp_path / "panns.pth")
    data_128 = load_config(None, ["data.n_mels=128"]).data
    with pytest.raises(
        ValueError,
        match=r"model.audio_weights=.*panns.pth is a PANNs CNN14 checkpoint trained on 64 mel bins "
        r"\(bn0 normalises each\): set data.n_mels=64 \(now 128\)",
    ):
        load_encoder_weights(ENCODERS["audio"]["tiny_cnn14"](1, 8, data_128), path, "audio")
    with pytest.raises(ValueError, match=r"is a PANNs CNN14 checkpoint .* loads into model.audio=cnn14"):
        load_encoder_weights(ENCODERS["audio"]["tiny2d"](1, 8, DATA), path, "audio")
    # A width other than PANNs' fails as any mismatch does, naming the keys and shapes.
    with pytest.raises(ValueError, match=r"shape mismatch at blocks.0.convs.0.weight: file \(4, 1, 3, 3\)"):
        load_encoder_weights(ENCODERS["audio"]["tiny_cnn14"](1, 4, DATA), path, "audio")


def test_panns_log_mel_differences_are_warned_by_key(tmp_path, caplog):
    path = _save_panns(_panns_state(width=4), tmp_path / "panns.pth")
    with caplog.at_level(logging.WARNING, logger="usvs_dist.models.weights"):
        load_encoder_weights(
            ENCODERS["audio"]["tiny_cnn14"](1, 8, load_config(None, PANNS_32K).data), path, "audio"
        )
    assert not caplog.records  # the paper's 32 kHz settings
    data = load_config(None, ["data.hop_length=320", "data.f_min=0"]).data
    with caplog.at_level(logging.WARNING, logger="usvs_dist.models.weights"):
        load_encoder_weights(ENCODERS["audio"]["tiny_cnn14"](1, 8, data), path, "audio")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert (
        "PANNs Cnn14_16k was trained on log-mel with data.hop_length=160, data.f_min=50, "
        "but the config sets data.hop_length=320, data.f_min=0.0; the weights load" in record.getMessage()
    )


@pytest.mark.parametrize(
    ("modality", "name", "torchvision", "stem", "x"),
    [
        ("image", "resnet18", tv_resnet18, "conv1.weight", torch.rand(2, 1, 32, 32)),
        ("video", "r2plus1d_18", tv_r2plus1d_18, "stem.0.weight", torch.rand(1, 1, 2, 16, 16)),
    ],
)
def test_torchvision_weights_load_for_rgb_and_sum_the_stem_over_colour_for_grey(
    tmp_path, caplog, modality, name, torchvision, stem, x
):
    file = tmp_path / f"{name}.pt"
    state = torchvision(weights=None).state_dict()
    torch.save(state, file)
    rgb = ENCODERS[modality][name](3, 8, DATA).eval()
    load_encoder_weights(rgb, str(file), modality)
    assert all(torch.equal(v, state[k]) for k, v in rgb.state_dict().items())
    grey = ENCODERS[modality][name](1, 8, DATA).eval()
    with caplog.at_level(logging.INFO, logger="usvs_dist.models.weights"):
        load_encoder_weights(grey, str(file), modality)
    assert f"{stem} summed over its 3 colour channels for data.channels=1" in caplog.text
    torch.testing.assert_close(grey.state_dict()[stem], state[stem].sum(dim=1, keepdim=True))
    # Grey through the summed stem = grey repeated into RGB (data.channels=3) through the original.
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, *x.shape[2:])), rtol=1e-4, atol=1e-5)
    # Grey-trained weights still do not fit an RGB encoder.
    torch.save(grey.state_dict(), tmp_path / "grey.pt")
    with pytest.raises(ValueError, match=rf"shape mismatch at {stem}: file \(\d+, 1, .*data.channels"):
        load_encoder_weights(rgb, str(tmp_path / "grey.pt"), modality)
