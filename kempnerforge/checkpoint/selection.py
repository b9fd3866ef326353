"""Which :class:`CheckpointConfig` a command runs with (torch-free).

Order, as in the CLI contract: an explicit job file; else the config recorded in the newest
checkpoint's ``metadata.json``; else the defaults. ``--set`` overrides apply on top, and dedicated
flags (applied by the caller) win over everything.

A command that scans the root anyway (``kf-ckpt ls``) passes its catalog: the scan has already
read every ``metadata.json``, so the recorded config is taken from it instead of reading the root
a second time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kempnerforge.checkpoint.layout import METADATA_JSON, parse_step, read_metadata_json
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import config_from_dict, load_config
from kempnerforge.errors import ConfigError

if TYPE_CHECKING:
    from kempnerforge.checkpoint.catalog import Catalog

__all__ = ["ConfigSelection", "recorded_config", "recorded_config_of", "select_config"]


@dataclass(frozen=True, kw_only=True)
class ConfigSelection:
    """The config a command uses and where it came from (``file``, ``recorded``, ``defaults``)."""

    config: CheckpointConfig
    source: str
    source_path: Path | None = None


def recorded_config(root: Path) -> tuple[CheckpointConfig, Path] | None:
    """The config recorded by the newest checkpoint that recorded one, and its metadata.json.

    Reads the metadata.json files of the step directories of ``root``, newest first, until one
    records a ``"checkpoint"`` table. None when none does, or ``root`` is not a directory.

    Raises:
        ConfigError: that recorded config is invalid (pass ``--config`` instead).
    """
    if not root.is_dir():
        return None
    with os.scandir(root) as it:
        steps = [
            (step, entry.name)
            for entry in it
            if (step := parse_step(entry.name)) is not None and entry.is_dir(follow_symlinks=False)
        ]
    steps.sort(reverse=True)
    for _, name in steps:
        step_dir = root / name
        data = read_metadata_json(step_dir).data
        if data is not None and isinstance(data.get("checkpoint"), dict):
            return _parsed(data["checkpoint"], step_dir / METADATA_JSON)
    return None


def recorded_config_of(catalog: Catalog) -> tuple[CheckpointConfig, Path] | None:
    """:func:`recorded_config` of a scanned root, from its catalog (no file is read again).

    Raises:
        ConfigError: that recorded config is invalid (pass ``--config`` instead).
    """
    for info in reversed(catalog.checkpoints):
        if info.recorded_config is not None:
            return _parsed(info.recorded_config, info.path / METADATA_JSON)
    return None


def _parsed(table: dict[str, Any], path: Path) -> tuple[CheckpointConfig, Path]:
    try:
        return config_from_dict(table, source=str(path)), path
    except ConfigError as exc:
        raise ConfigError(f"{exc}; pass the run's job file with --config") from exc


def select_config(
    root: Path | None,
    config_path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    catalog: Catalog | None = None,
) -> ConfigSelection:
    """Pick the config for a command on ``root`` (``None``: no checkpoint root to look in).

    With ``catalog`` (a scan of ``root``), the recorded config is taken from it rather than read
    from disk again.

    Raises:
        ConfigError: the job file, a recorded config or an override is invalid.

    Example:
        >>> select_config(Path("runs/a/ckpt"), None, ["checkpoint.keep_last_n=2"])  # doctest: +SKIP
        ConfigSelection(config=CheckpointConfig(..., keep_last_n=2, ...), source='recorded', ...)
    """
    overrides = list(overrides)
    if config_path is not None:
        return ConfigSelection(
            config=load_config(config_path, overrides), source="file", source_path=Path(config_path)
        )
    if catalog is not None:
        found = recorded_config_of(catalog)
    else:
        found = recorded_config(root) if root is not None else None
    if found is not None:
        config, path = found
        return ConfigSelection(
            config=load_config(None, overrides, base=config), source="recorded", source_path=path
        )
    return ConfigSelection(config=load_config(None, overrides), source="defaults")
