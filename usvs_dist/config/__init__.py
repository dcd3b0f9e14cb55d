"""Typed configuration: dataclass tree, YAML + dotlist loading, validation, flattening, redaction."""

from usvs_dist.config.load import flatten, from_dict, load_config, to_dict, to_yaml
from usvs_dist.config.redact import env_sources, redact, redacted
from usvs_dist.config.schema import (
    AnatomyConfig,
    AugmentConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    PhantomConfig,
    PretextConfig,
    RootConfig,
    SelfPacedConfig,
    TermConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "AnatomyConfig",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PhantomConfig",
    "PretextConfig",
    "RootConfig",
    "SelfPacedConfig",
    "TermConfig",
    "TrackingConfig",
    "TrainConfig",
    "env_sources",
    "flatten",
    "from_dict",
    "load_config",
    "redact",
    "redacted",
    "to_dict",
    "to_yaml",
]
