"""Configuration of the checkpoint toolkit (no torch import)."""

from kempnerforge.config.checkpoint import (
    AsyncCheckpointMode,
    CheckpointConfig,
    DynamicCheckpointWindow,
)
from kempnerforge.config.loader import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from kempnerforge.config.registry import registry

__all__ = [
    "AsyncCheckpointMode",
    "CheckpointConfig",
    "DynamicCheckpointWindow",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "registry",
]
