"""Which :class:`CheckpointConfig` a command runs with (torch-free).

Order, as in the CLI contract: an explicit job file; else the policy recorded in the root by
``kf-ckpt mark`` (:mod:`kempnerforge.checkpoint.store.policy`); else the config recorded in the
newest checkpoint's ``metadata.json`` that has one; else the defaults. ``--set`` overrides apply
on top, and dedicated flags (applied by the caller) win over everything.

A command that scans the root anyway (``kf-ckpt ls``) passes its catalog: the scan has already
read every ``metadata.json``, so the recorded config is taken from it instead of reading the root
a second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kempnerforge.checkpoint.store.layout import METADATA_JSON, list_step_dirs
from kempnerforge.checkpoint.store.policy import read_policy
from kempnerforge.checkpoint.store.recorded import read_metadata_json
from kempnerforge.checkpoint.store.resolve import (
    resolve_checkpoint,
)
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import load_config, recorded_config_from_dict
from kempnerforge.errors import CheckpointRootError, ConfigError, Remedy

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.records import Catalog

__all__ = [
    "ConfigSelection",
    "RecordedConfig",
    "recorded_config",
    "recorded_config_of",
    "scan_root",
    "select_checkpoint",
    "select_config",
    "select_root",
]


@dataclass(frozen=True, kw_only=True)
class ConfigSelection:
    """The config a command uses and where it came from (``file``, ``policy``, ``recorded``,
    ``defaults``)."""

    config: CheckpointConfig
    source: str
    source_path: Path | None = None
    has_policy: bool = True
    """A retention policy is known: from a job file, the root's recorded policy, a recorded
    config, or a ``keep_last_n`` given explicitly. Without one, retention deletes nothing."""
    warnings: tuple[str, ...] = ()
    """What the caller should tell the user (keys of a recorded config this version ignores)."""


@dataclass(frozen=True, kw_only=True)
class RecordedConfig:
    """The config a run recorded in a checkpoint's metadata.json, read leniently."""

    config: CheckpointConfig
    path: Path
    """The metadata.json it was read from."""
    ignored_keys: tuple[str, ...] = ()
    """Keys this version does not know (written by a newer one): ignored, with a warning."""

    @property
    def warning(self) -> str | None:
        """The one warning about the ignored keys, if any."""
        if not self.ignored_keys:
            return None
        keys = ", ".join(self.ignored_keys[:8]) + (" ..." if len(self.ignored_keys) > 8 else "")
        return (
            f"{self.path} records keys this version does not know ({keys}), written by a "
            "newer version?; ignored"
        )


def recorded_config(root: Path) -> RecordedConfig | None:
    """The config recorded by the newest checkpoint that recorded one, and its metadata.json.

    Reads the metadata.json files of the step directories of ``root``, newest first, until one
    records a ``"checkpoint"`` table. None when none does, or ``root`` is not a directory.

    Unknown keys (a newer version wrote them) are ignored and listed in the result.

    Raises:
        ConfigError: a known key of that recorded config has a bad value (pass ``--config``).
    """
    if not root.is_dir():
        return None
    for _, step_dir in reversed(list_step_dirs(root)):
        data = read_metadata_json(step_dir).data
        if data is not None and isinstance(data.get("checkpoint"), dict):
            return _parsed(data["checkpoint"], step_dir / METADATA_JSON)
    return None


def recorded_config_of(catalog: Catalog) -> RecordedConfig | None:
    """:func:`recorded_config` of a scanned root, from its catalog (no file is read again).

    Raises:
        ConfigError: that recorded config is invalid (pass ``--config`` instead).
    """
    for info in reversed(catalog.checkpoints):
        if info.recorded_config is not None:
            return _parsed(info.recorded_config, info.path / METADATA_JSON)
    return None


def _parsed(table: dict[str, Any], path: Path) -> RecordedConfig:
    try:
        config, ignored = recorded_config_from_dict(table, source=str(path))
    except ConfigError as exc:
        raise ConfigError(str(exc), remedy=Remedy.config_file) from exc
    return RecordedConfig(config=config, path=path, ignored_keys=ignored)


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
    policy = read_policy(root) if root is not None else None
    if policy is not None:
        config, path = policy
        return ConfigSelection(
            config=load_config(None, overrides, base=config), source="policy", source_path=path
        )
    if catalog is not None:
        found = recorded_config_of(catalog)
    else:
        found = recorded_config(root) if root is not None else None
    if found is not None:
        return ConfigSelection(
            config=load_config(None, overrides, base=found.config),
            source="recorded",
            source_path=found.path,
            warnings=(found.warning,) if found.warning else (),
        )
    return ConfigSelection(
        config=load_config(None, overrides),
        source="defaults",
        has_policy=any(_sets_keep_last_n(override) for override in overrides),
    )


def _sets_keep_last_n(override: str) -> bool:
    key = override.partition("=")[0].strip()
    return key.removeprefix("checkpoint.") == "keep_last_n"


def select_root(
    directory: str | None, config_path: str | None, overrides: Sequence[str]
) -> tuple[Path, ConfigSelection]:
    """The checkpoint root a command works on and the config selected for it.

    ``DIR`` when given, else ``checkpoint.dir`` of the job file / overrides / defaults; the config
    is then selected for that root (job file, else the one recorded in its newest checkpoint,
    else the defaults; overrides on top).
    """
    if directory is not None:
        root = Path(directory)
    elif config_path is not None:
        selection = select_config(None, config_path, overrides)
        return Path(selection.config.dir), selection
    else:
        root = Path(select_config(None, None, overrides).config.dir)
    return root, select_config(root, config_path, overrides)


def scan_root(
    directory: str | None,
    config_path: str | None,
    overrides: Sequence[str],
    *,
    verify: bool = False,
) -> tuple[Catalog, ConfigSelection]:
    """:func:`select_root`, and the scan of that root, with one pass over the root.

    The root is scanned first and the recorded config is taken from the catalog (the scan
    reads every metadata.json anyway), instead of reading the newest ones a second time. The
    config and the errors are those of :func:`select_root` followed by ``scan(root)``: a bad
    ``--set`` is reported before a missing root. ``verify`` is passed on to the scan.
    """
    from kempnerforge.checkpoint.store.catalog import scan

    if config_path is not None:
        selection = select_config(None, config_path, overrides)
        root = Path(directory) if directory is not None else Path(selection.config.dir)
        return scan(root, verify=verify), selection
    if directory is not None:
        root = Path(directory)
    else:
        root = Path(select_config(None, None, overrides).config.dir)
    try:
        catalog = scan(root, verify=verify)
    except CheckpointRootError:
        select_config(None, None, overrides)  # a bad override is named first, as select_root does
        raise
    return catalog, select_config(root, None, overrides, catalog=catalog)


def select_checkpoint(
    src: str | None, config_path: str | None, overrides: Sequence[str], step: int | None
) -> tuple[Path, ConfigSelection]:
    """The complete checkpoint a one-checkpoint command reads, and the config of its run.

    ``src`` is a checkpoint root (``None``: ``checkpoint.dir`` of the config) with ``step``
    picking the checkpoint (default the newest complete one), or one checkpoint directory,
    whose run's config is the one recorded in its parent root.
    """
    root, selection = select_root(src, config_path, overrides)
    step_dir = resolve_checkpoint(root, step)
    if step_dir.parent != root:  # src is a checkpoint dir: its run's config is in its root
        selection = select_config(step_dir.parent, config_path, overrides)
    return step_dir, selection
