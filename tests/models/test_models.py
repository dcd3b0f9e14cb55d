"""Encoders (tiny and paper size), the assembled model per recipe, and weight files."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.video import r2plus1d_18 as tv_r2plus1d_18

from usvs_dist.config import load_config
from usvs_dist.losses import check_objective
from usvs_dist.models import ENCODERS, build_model, encoder_state_dicts
from usvs_dist.models.weights import load_encoder_weights

DATA = load_config().data


def _input(modality: str, channels: int, size: int = 32) -> torch.Tensor:
    if modality == "video":
        return torch.rand(2, channels, 6, size, size)
    if modality == "image":
        return torch.rand(2, channels, size, size)
    return torch.randn(2, 1, DATA.n_mels, 201)


@pytest.mark.parametrize(
    ("modality", "name"),
    [
        ("video", "tiny3d"),
        ("video", "tiny_r2plus1d"),
        ("audio", "tiny2d"),
        ("audio", "tiny_cnn14"),
        ("image", "tiny_resnet"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_tiny_encoders_map_inputs_to_features_and_learn(modality, name, channels):
    channels = 1 if modality == "audio" else channels
    encoder = ENCODERS[modality][name](channels, 8, DATA)
    feat = encoder(_input(modality, channels))
    assert feat.shape == (2, encoder.out_features)
    feat.square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize(
    ("modality", "name", "out_features", "millions"),
    [
        ("video", "r2plus1d_18", 512, (31.2, 31.4)),
        ("image", "resnet18", 512, (11.1, 11.2)),
        ("audio", "cnn14", 2048, (79.0, 80.5)),
    ],
)
def test_paper_encoders_have_the_published_size(modality, name, out_features, millions):
    encoder = ENCODERS[modality][name](1, 8, DATA).eval()
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    assert millions[0] < params < millions[1], params
    with torch.no_grad():
        assert encoder(_input(modality, 1, 64)).shape == (2, out_features)


VISUAL_ENCODERS = [(m, name) for m in ("video", "image") for name in ENCODERS[m]]


@pytest.mark.parametrize(("modality", "name"), VISUAL_ENCODERS)
def test_visual_feature_maps_pool_to_the_pooled_feature(modality, name):
    # The map a spatial decoder reads is the block `forward` pools: its spatial mean is the feature.
    encoder = ENCODERS[modality][name](1, 4, DATA).eval()
    x = _input(modality, 1, 64)
    with torch.no_grad():
        feat, fmap = encoder(x), encoder.feature_map(x)
    stride = {"resnet18": 32, "tiny_resnet": 32}.get(name, 16)
    assert fmap.shape == (2, encoder.out_features, 64 // stride, 64 // stride)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), feat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("modality", "name", "torchvision_builder", "x"),
    [
        ("image", "resnet18", tv_resnet18, torch.rand(2, 3, 64, 64)),
        ("video", "r2plus1d_18", tv_r2plus1d_18, torch.rand(2, 3, 4, 32, 32)),
    ],
)
def test_paper_encoders_are_torchvision_s_networks(modality, name, torchvision_builder, x):
    # Same seed, same initial weights (the random baseline does not move) and the same forward,
    # bit for bit: the subclass only adds feature_map.
    torch.manual_seed(3)
    ours = ENCODERS[modality][name](3, 8, DATA).eval()
    torch.manual_seed(3)
    theirs = torchvision_builder(weights=None).eval()
    theirs.fc = torch.nn.Identity()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize(
    ("recipe", "outputs", "modules"),
    [
        ("usvs2020", {"video", "audio"}, {"video_encoder", "audio_encoder", "video_head", "audio_head"}),
        (
            "dual2024",
            {"video", "audio", "image", "va", "vi"},
            {
                "video_encoder",
                "audio_encoder",
                "image_encoder",
                "video_head",
                "audio_head",
                "image_head",
                "fusion_va",
                "fusion_vi",
            },
        ),
        ("isbi2020", {"order_logits", "rotation_logits"}, {"video_encoder", "order_head", "rotation_head"}),
        ("awcl2022", {"image_view1", "image_view2"}, {"image_encoder", "image_head"}),
    ],
)
def test_model_is_assembled_from_what_the_recipe_reads(recipe, outputs, modules):
    cfg = load_config(
        None, [f"objective.recipe={recipe}", "model.width=4", "model.embed_dim=8", "data.frame_size=32"]
    )
    model = build_model(cfg, check_objective(cfg.objective).outputs)
    assert set(encoder_state_dicts(model)) == modules
    inputs = {
        "video": torch.rand(3, 1, 6, 32, 32),
        "audio": torch.randn(3, 1, 64, 201),
        "image": torch.rand(3, 1, 32, 32),
        "image_view1": torch.rand(3, 1, 32, 32),
        "image_view2": torch.rand(3, 1, 32, 32),
        "pretext_clips": torch.rand(3, 3, 1, 2, 32, 32),
    }
    out = model(inputs)
    assert set(out) == outputs
    for name, value in out.items():
        expected = {"order_logits": 6, "rotation_logits": 4}.get(name, 8)
        assert value.shape == (3, expected), name


def test_weights_round_trip_from_a_state_dict_and_from_encoders_pt(tmp_path):
    cfg = load_config(None, ["model.width=4"])
    source = build_model(cfg, {"video", "audio"})
    torch.save(source.encoders["video"].state_dict(), tmp_path / "video.pt")
    torch.save(encoder_state_dicts(source), tmp_path / "encoders.pt")
    for file in ("video.pt", "encoders.pt"):
        loaded = build_model(
            load_config(None, ["model.width=4", f"model.video_weights={tmp_path / file}"]), {"video"}
        )
        for k, v in source.encoders["video"].state_dict().items():
            assert torch.equal(loaded.encoders["video"].state_dict()[k], v), (file, k)


def test_torchvision_classifier_keys_are_dropped_and_one_channel_weights_need_one_channel(tmp_path):
    torch.save(tv_resnet18(weights=None).state_dict(), tmp_path / "imagenet.pt")
    rgb = ENCODERS["image"]["resnet18"](3, 8, DATA)
    load_encoder_weights(rgb, str(tmp_path / "imagenet.pt"), "image")
    grey = ENCODERS["image"]["resnet18"](1, 8, DATA)
    load_encoder_weights(grey, str(tmp_path / "imagenet.pt"), "image")  # stem summed over colour
    torch.save(grey.state_dict(), tmp_path / "grey.pt")
    with pytest.raises(
        ValueError,
        match=r"model.image_weights=.*grey.pt does not fit model.image: shape mismatch "
        r"at conv1.weight: file \(64, 1, 7, 7\), encoder \(64, 3, 7, 7\).*data.channels",
    ):
        load_encoder_weights(rgb, str(tmp_path / "grey.pt"), "image")


def test_bad_weight_files_are_named(tmp_path):
    encoder = ENCODERS["video"]["tiny3d"](1, 4, DATA)
    with pytest.raises(FileNotFoundError, match="model.video_weights=.*missing.pt: no such file"):
        load_encoder_weights(encoder, str(tmp_path / "missing.pt"), "video")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a loadable torch weights file"):
        load_encoder_weights(encoder, str(tmp_path / "junk.pt"), "video")
    other = ENCODERS["video"]["tiny_r2plus1d"](1, 4, DATA)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"keys missing .* unexpected keys"):
        load_encoder_weights(encoder, str(tmp_path / "other.pt"), "video")
