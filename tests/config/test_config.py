"""Config: defaults == quickstart.yaml, overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from usvs_dist.config import ConfigError, RootConfig, flatten, from_dict, load_config, to_dict
from usvs_dist.train.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_embedded_defaults_are_the_quickstart_yaml():
    assert load_config(REPO / "configs" / "quickstart.yaml") == RootConfig()


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 4\ntrain:\n  steps: 7\n")
    cfg = load_config(path, ["train.steps=9", "objective.temperature=0.2"])
    assert (cfg.data.batch_size, cfg.train.steps, cfg.objective.temperature) == (4, 9, 0.2)


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.width=8"])
    assert from_dict(to_dict(cfg)) == cfg
    assert flatten(cfg)["model.width"] == 8


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.foo=1"], "unknown config key 'data.foo'"),
        (["nosuch.key=1"], "unknown config key 'nosuch'"),
        (["data.batch_size=abc"], "'data.batch_size'"),
        (["train.use_gpu=maybe"], "'train.use_gpu'"),
        (["objective.temperature=0"], "objective.temperature=0.0 is invalid"),
        (["objective.temperature=1.5"], "objective.temperature=1.5 is invalid"),
        (["train.zero_stage=4"], "train.zero_stage=4"),
        (["data.split=dev"], "data.split='dev'"),
        (["steps=3"], "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.momentum'"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["data.nope=1"],
        ["objective.temperature=-1"],
        ["model.video=resnet9000"],
        ["objective.recipe=nope"],
    ],
)
def test_entry_exits_2_with_one_line_before_ray_starts(argv, capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert argv[0].split("=")[0] in err
    assert not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []  # nothing written


PAPER_CONFIGS = ("usvs2020", "dual2024", "isbi2020", "awcl2022")


@pytest.mark.parametrize("recipe", PAPER_CONFIGS)
def test_paper_configs_hold_the_papers_settings(recipe):
    from usvs_dist.train.preflight import check_config

    cfg = load_config(REPO / "configs" / f"{recipe}.yaml")
    check_config(cfg)
    assert cfg.objective.recipe == recipe
    assert (cfg.data.num_frames, cfg.data.frame_size, cfg.data.channels) == (14, 128, 1)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 3e-3, 1e-4)
    assert cfg.train.use_gpu and (cfg.model.embed_dim == 512 or recipe == "isbi2020")  # isbi2020: no latent
    assert cfg.model.video == "r2plus1d_18" or recipe == "awcl2022"


def test_dual2024_config_builds_the_paper_model():
    from usvs_dist.losses import check_objective
    from usvs_dist.models import build_model

    cfg = load_config(REPO / "configs" / "dual2024.yaml")
    assert (cfg.objective.temperature, cfg.objective.pi) == (0.1, 0.5)
    model = build_model(cfg, check_objective(cfg.objective).outputs)
    assert {m: type(e).__name__ for m, e in model.encoders.items()} == {
        "video": "R2Plus1D18",  # torchvision's VideoResNet with a feature_map
        "audio": "CNN14",
        "image": "ResNet18",  # torchvision's ResNet with a feature_map
    }
    assert model.projections["audio"].proj.out_features == 512
    assert model.fusions["va"].proj.in_features == 512 + 2048


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lr=inf"], "config key optim.lr=inf is invalid: expected a finite number"),
        (["objective.temperature=nan"], "config key objective.temperature=nan is invalid"),
        (["objective.self_paced.lambda0=-inf"], "config key objective.self_paced.lambda0=-inf is invalid"),
        (["objective.weights={mmcl_a: .nan}"], "config key objective.weights.mmcl_a=nan is invalid"),
        (
            ["objective.recipe=custom", "objective.terms=[{term: va_nce, weight: .inf}]"],
            "config key objective.terms[0].weight=inf is invalid",
        ),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="expected a finite number"):
        from_dict({"optim": {"lr": float("inf")}})  # the tree Ray workers and sweeps rebuild from


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective.self_paced.schedule=exp"],
            "config key objective.self_paced.schedule='exp' is invalid: expected one of linear, cosine, step",
        ),
        (["train.placement_strategy=pack"], "config key train.placement_strategy='pack' is invalid"),
        (["data.channels=2"], "config key data.channels=2 is invalid: expected one of 1, 3"),
        (
            ["eval.plane_splits=[train,dev]"],
            "config key eval.plane_splits[1]='dev' is invalid: expected one of train, val, test",
        ),
    ],
)
def test_a_choice_outside_its_literal_is_refused_at_merge_naming_the_full_key(overrides, message):
    from omegaconf.errors import ValidationError

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, ValidationError)  # OmegaConf's merge refused it
    with pytest.raises(ConfigError, match="objective.self_paced.schedule='exp'"):
        from_dict({"objective": {"self_paced": {"schedule": "exp"}}})  # the tree workers rebuild from


def test_sections_built_in_code_check_their_choices_and_ranges_under_their_full_key():
    from usvs_dist.config import AugmentConfig, OptimConfig

    with pytest.raises(ConfigError, match=r"^config key optim.name='lamb' is invalid: expected one of adamw"):
        OptimConfig(name="lamb")
    with pytest.raises(ConfigError, match=r"^config key data.augment.brightness=1.5 is invalid: expected in"):
        AugmentConfig(brightness=1.5)


def test_sync_bn_is_refused_on_cpu_runs_before_any_worker_starts():
    # torch.nn.SyncBatchNorm runs on CUDA tensors only (its forward raises for a CPU input).
    expected = r"^config key model.sync_bn=True is invalid: expected false when train.use_gpu is false"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["model.sync_bn=true"])
    with pytest.raises(ConfigError, match=expected):
        from_dict({"model": {"sync_bn": True}})  # the tree workers rebuild from
    cfg = load_config(None, ["model.sync_bn=true", "train.use_gpu=true"])
    assert cfg.model.sync_bn and cfg.train.use_gpu


def test_section_keys_are_where_the_sections_sit_in_the_tree():
    from usvs_dist import config
    from usvs_dist.config.schema import Split, choice_fields
    from usvs_format import SPLITS

    expected = {
        "RootConfig": "",
        "DataConfig": "data",
        "AugmentConfig": "data.augment",
        "PhantomConfig": "phantom",
        "ModelConfig": "model",
        "ObjectiveConfig": "objective",
        "SelfPacedConfig": "objective.self_paced",
        "PretextConfig": "objective.pretext",
        "AnatomyConfig": "objective.anatomy",
        "OptimConfig": "optim",
        "TrainConfig": "train",
        "TrackingConfig": "tracking",
        "EvalConfig": "eval",
    }
    assert {name: getattr(config, name).KEY for name in expected} == expected
    assert config.PretextConfig().key("subclips") == "objective.pretext.subclips"
    assert choice_fields(config.DataConfig)["split"] == (SPLITS, False)
    assert Split.__args__ == SPLITS  # the Literal restates the shard format's splits


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_sze=3", "unknown config key 'data.batch_sze': did you mean data.batch_size?"),
        ("data.augment.flp=true", "unknown config key 'data.augment.flp': did you mean data.augment.flip?"),
        ("trian.steps=3", "unknown config key 'trian': did you mean train?"),
        (
            "tracking.zzzz=1",
            "unknown config key 'tracking.zzzz': expected one of tracking.uri, tracking.experiment, "
            "tracking.system_metrics, tracking.system_metrics_interval, tracking.register_as",
        ),
    ],
)
def test_an_unknown_key_names_the_nearest_valid_one(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"override {override!r}: {message}"
