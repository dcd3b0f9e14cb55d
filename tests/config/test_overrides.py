"""One override path: the CLI dotlist, a Tune trial's parameters and evaluation's overrides all
set keys through config.apply_overrides, with the same parsing, checks and messages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import usvs_dist.config as config
from usvs_dist.config import ConfigError, RootConfig, apply_overrides, env_sources, load_config


def test_a_dict_and_a_dotlist_set_the_same_values_as_the_command_line():
    base = RootConfig()
    as_dict = apply_overrides(base, {"objective.temperature": 0.2, "objective.self_paced.schedule": "cosine"})
    as_list = apply_overrides(base, ["objective.temperature=0.2", "objective.self_paced.schedule=cosine"])
    assert (
        as_dict
        == as_list
        == load_config(None, ["objective.temperature=0.2", "objective.self_paced.schedule=cosine"])
    )
    assert base.objective.temperature == 0.1  # the base is left as it was


def test_numpy_scalars_from_a_search_are_plain_values():
    np = pytest.importorskip("numpy")
    cfg = apply_overrides(
        RootConfig(), {"objective.temperature": np.float64(0.3), "data.batch_size": np.int64(4)}
    )
    assert (cfg.objective.temperature, cfg.data.batch_size) == (0.3, 4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.name=lamb", "config key optim.name='lamb' is invalid: expected one of adamw, adam, sgd"),
        ("data.batch_size=1", "config key data.batch_size=1 is invalid: expected an integer >= 2"),
        ("data.nope=1", "unknown config key 'data.nope'"),
        ("steps=3", "override 'steps=3': expected section.key=value"),
    ],
)
def test_apply_overrides_refuses_as_load_config_does(override, message):
    with pytest.raises(ConfigError) as from_cli:
        load_config(None, [override])
    key, _, value = override.partition("=")
    for overrides in ([override], {key: value}):
        with pytest.raises(ConfigError) as applied:
            apply_overrides(RootConfig(), overrides)
        assert message in str(applied.value) and str(applied.value) == str(from_cli.value)


def test_a_key_set_by_an_override_no_longer_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("USVS_TEST_URI", "sqlite:///private.db")
    base = load_config(None, ["tracking.uri=${oc.env:USVS_TEST_URI}"])
    assert set(env_sources(apply_overrides(base, {"optim.lr": 0.01}))) == {"tracking.uri"}
    assert env_sources(apply_overrides(base, ["tracking.uri=sqlite:///public.db"])) == {}


def test_tune_trials_and_evaluation_go_through_apply_overrides(monkeypatch, tmp_path):
    """A Tune parameter and an evaluation override reach the same function, the config's own."""
    import usvs_dist.evaluate as evaluate
    import usvs_dist.tune.sweep as sweep

    calls: list[object] = []

    def spy(cfg, overrides):
        calls.append(overrides)
        return config.apply_overrides(cfg, overrides)

    assert sweep.apply_overrides is evaluate.apply_overrides is config.apply_overrides
    for module in (sweep, evaluate):
        monkeypatch.setattr(module, "apply_overrides", spy)

    # A trial: the base travels as a dict, the sampled parameters come as {key: value}.
    trained = []
    monkeypatch.setattr(sweep, "train_run", lambda cfg, **_: trained.append(cfg))
    monkeypatch.setattr(sweep.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0"))
    monkeypatch.setattr(sweep, "TuneReportCallback", lambda: None)  # needs a live Tune session
    base = config.to_dict(RootConfig())
    sweep._trial({"objective.temperature": 0.25}, base=base, env={}, sweep_name="s", parent_run_id="p")
    assert trained[0].objective.temperature == 0.25 and trained[0].train.run_name == "s-t0"

    # An evaluation: eval.* overrides on the run's config; other sections stay the run's.
    run_cfg = RootConfig()
    enc = SimpleNamespace(cfg=run_cfg)
    monkeypatch.setattr(evaluate, "_load", lambda args, tmp: (enc, None, None))
    evaluated = []
    monkeypatch.setattr(evaluate, "evaluate", lambda enc, *_: evaluated.append(enc.cfg) or {"report": ""})
    argv = ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), "--shards", str(tmp_path)]
    assert evaluate.main([*argv, "eval.folds=3"]) == 0
    assert evaluated[0].eval.folds == 3 and evaluated[0].model == run_cfg.model
    assert calls == [{"objective.temperature": 0.25}, ["eval.folds=3"]]

    assert evaluate.main([*argv, "model.width=8"]) == 2  # the architecture stays the run's
    assert len(calls) == 2
