"""Which :class:`CheckpointConfig` a command runs with (torch-free).

Order, as in the CLI contract: an explicit job file; else the config recorded in the newest
checkpoint's ``metadata.json``; else the defaults. ``--set`` overrides apply on top, and dedicated
flags (applied by the caller) win over everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.layout import METADATA_JSON, list_step_dirs, read_metadata_json
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import config_from_dict, load_config
from kempnerforge.errors import ConfigError

__all__ = ["ConfigSelection", "recorded_config", "select_config"]


@dataclass(frozen=True, kw_only=True)
class ConfigSelection:
    """The config a command uses and where it came from (``file``, ``recorded``, ``defaults``)."""

    config: CheckpointConfig
    source: str
    source_path: Path | None = None


def recorded_config(root: Path) -> tuple[CheckpointConfig, Path] | None:
    """The config recorded by the newest checkpoint that recorded one, and its metadata.json.

    Raises:
        ConfigError: that recorded config is invalid (pass ``--config`` instead).
    """
    if not root.is_dir():
        return None
    for _, step_dir in reversed(list_step_dirs(root)):
        data = read_metadata_json(step_dir).data
        if data is None or not isinstance(data.get("checkpoint"), dict):
            continue
        path = step_dir / METADATA_JSON
        try:
            return config_from_dict(data["checkpoint"], source=str(path)), path
        except ConfigError as exc:
            raise ConfigError(f"{exc}; pass the run's job file with --config") from exc
    return None


def select_config(
    root: Path | None,
    config_path: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> ConfigSelection:
    """Pick the config for a command on ``root`` (``None``: no checkpoint root to look in)."""
    overrides = list(overrides)
    if config_path is not None:
        return ConfigSelection(
            config=load_config(config_path, overrides), source="file", source_path=Path(config_path)
        )
    found = recorded_config(root) if root is not None else None
    if found is not None:
        config, path = found
        return ConfigSelection(
            config=load_config(None, overrides, base=config), source="recorded", source_path=path
        )
    return ConfigSelection(config=load_config(None, overrides), source="defaults")
