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

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import (
    LATEST_NAME,
    METADATA_JSON,
    guess_step,
    holds_dcp_checkpoint,
    list_foreign_checkpoints,
    list_step_dirs,
    parse_step,
    read_metadata_json,
    step_dir_name,
)
from kempnerforge.checkpoint.store.policy import read_policy
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import load_config, recorded_config_from_dict
from kempnerforge.errors import CheckpointRootError, ConfigError, Remedy

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.catalog import Catalog

__all__ = [
    "ConfigSelection",
    "RecordedConfig",
    "leased",
    "leased_checkpoint",
    "newest_complete",
    "recorded_config",
    "recorded_config_of",
    "resolve_checkpoint",
    "scan_root",
    "select_checkpoint",
    "select_config",
    "select_root",
    "split_checkpoint_path",
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


def split_checkpoint_path(src: str | Path) -> tuple[Path, int | None]:
    """``(root, step)`` for one checkpoint directory ``src``; ``(src, None)`` for anything else.

    ``src`` names one checkpoint when its own name is a canonical ``step_<N>`` and it holds no
    ``step_<N>`` directories itself (then it is not a root); its root is its parent directory.

    Raises:
        CheckpointRootError: ``src`` does not exist or is not a directory.
    """
    from kempnerforge.errors import CheckpointRootError

    path = Path(src)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise CheckpointRootError(f"{path} {what}; pass a checkpoint root or a step_<N> dir")
    named = path if path.name else path.absolute()  # "." or ".." name the directory they are
    step = parse_step(named.name)
    if step is None:
        return path, None
    try:
        nested = bool(list_step_dirs(path))
    except OSError:
        nested = False
    return (path, None) if nested else (named.parent, step)


def newest_complete(root: Path, *, skipped: list[str] | None = None) -> Path | None:
    """The newest verifiably complete checkpoint directory under ``root``, or None.

    Newest first, each candidate gets the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint` until one passes; a corrupt
    one is passed over (and described in ``skipped``, when given). None also for no root.
    """
    try:
        dirs = list_step_dirs(root)
    except OSError:
        return None
    for _, path in reversed(dirs):
        verdict = verify_checkpoint(path)
        if verdict.complete:
            return path
        if verdict.corrupt and skipped is not None:
            skipped.append(f"{path.name} is corrupt ({verdict.reason})")
    return None


def resolve_checkpoint(src: str | Path, step: int | None = None) -> Path:
    """The verifiably complete checkpoint directory that ``src`` (and ``step``) name.

    ``src`` is either one checkpoint directory -- any directory holding a DCP ``.metadata``
    (or ``pp<k>/`` stages), whatever its name and whoever wrote it, or the root's ``latest``
    link -- or a checkpoint root; for a root, ``step`` picks the checkpoint (a ``step_<N>``
    child, else another tool's ``step-<N>``), and by default the newest verifiably complete
    ``step_<N>`` one is used. Every checkpoint returned passed the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint`.

    Raises:
        CheckpointRootError: ``src`` does not exist or is not a directory.
        CheckpointNotFoundError: no checkpoint of that step, or no complete one at all.
        CorruptCheckpointError: the named checkpoint is incomplete or corrupt.
    """
    from kempnerforge.errors import (
        CheckpointNotFoundError,
        CheckpointRootError,
        CorruptCheckpointError,
    )

    path = _follow_latest(Path(src))
    if not path.exists():
        raise CheckpointRootError(
            f"{path} does not exist; pass a checkpoint root or a checkpoint directory"
        )
    if not path.is_dir():
        raise CheckpointRootError(
            f"{path} is not a directory; pass a checkpoint root or a checkpoint directory"
        )
    own_step = parse_step(path.name)
    is_checkpoint = holds_dcp_checkpoint(path) or (
        own_step is not None and (path / METADATA_JSON).exists()
    )
    if is_checkpoint:
        named = own_step if own_step is not None else guess_step(path.name)
        if step is not None and named is not None and step != named:
            raise CheckpointNotFoundError(
                f"{path} is the checkpoint of step {named}, not {step}", remedy=Remedy.drop_step
            )
        target = path
    else:
        foreign = list_foreign_checkpoints(path)
        if step is None:
            passed_over: list[str] = []
            newest = newest_complete(path, skipped=passed_over)
            if newest is None:
                raise CheckpointNotFoundError(_nothing_under(path, foreign, passed_over))
            return newest
        matches = [p for s, p in list_step_dirs(path) if s == step]
        matches += [p for p in foreign if guess_step(p.name) == step]
        if not matches:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {step} under {path}; run 'kf-ckpt ls {path}'"
            )
        target = matches[0]
    verdict = verify_checkpoint(target)
    if not verdict.complete:
        state = "corrupt" if verdict.corrupt else "incomplete"
        raise CorruptCheckpointError(
            f"checkpoint {target} is {state} ({verdict.reason}); pick a complete one "
            f"with 'kf-ckpt ls {target.parent}'"
        )
    return target


def _nothing_under(root: Path, foreign: list[Path], passed_over: list[str]) -> str:
    if not foreign:
        also = f" ({'; '.join(passed_over)})" if passed_over else ""
        return f"no complete checkpoint under {root}{also}; run 'kf-ckpt ls {root}'"
    names = ", ".join(p.name for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (
        f"no step_<N> checkpoint under {root}, but it holds {len(foreign)} DCP checkpoint"
        f"{'s' if len(foreign) > 1 else ''} written under other names ({names}); pass one of "
        f"them, e.g. {foreign[-1]}, or its step"
    )


@contextlib.contextmanager
def leased_checkpoint(src: str | Path, step: int | None = None) -> Iterator[Path]:
    """:func:`resolve_checkpoint`, holding a read lease on the result for the ``with`` block.

    While the lease is held gc does not delete the checkpoint (a long export is not cut off);
    a gc that was already moving it away when the lease was asked for has finished by the time
    it is granted, and then the checkpoint is reported as deleted, not as corrupt.

    Raises:
        CheckpointNotFoundError: also when the checkpoint was deleted before the lease began.
    """
    with leased(resolve_checkpoint(src, step)) as step_dir:
        yield step_dir


@contextlib.contextmanager
def leased(step_dir: Path) -> Iterator[Path]:
    """Hold a read lease on the checkpoint directory ``step_dir`` (see :func:`leased_checkpoint`).

    Raises:
        CheckpointNotFoundError: the checkpoint was deleted before the lease began.
    """
    from kempnerforge.checkpoint.store._lock import read_lease
    from kempnerforge.errors import CheckpointNotFoundError

    with read_lease(step_dir):
        if not step_dir.is_dir():
            raise CheckpointNotFoundError(
                f"{step_dir} was deleted (by a gc) before it could be read; pick another with "
                f"'kf-ckpt ls {step_dir.parent}'"
            )
        yield step_dir


def _follow_latest(path: Path) -> Path:
    """``ROOT/latest`` as the checkpoint it names (when honoured); any other path as it is."""
    if path.name != LATEST_NAME or not path.is_symlink():
        return path
    link = read_latest(path.parent)
    if link.step is None:
        from kempnerforge.errors import CheckpointNotFoundError

        raise CheckpointNotFoundError(
            f"{path}: {link.warning or 'not a usable latest link'}; pass the root "
            f"{path.parent} or a step_<N> dir"
        )
    return path.parent / step_dir_name(link.step)
