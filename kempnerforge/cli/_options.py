"""Options and helpers shared by several ``kf-ckpt`` commands (parsing and rendering only)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kempnerforge.checkpoint.store.selection import ConfigSelection, select_config
from kempnerforge.errors import CheckpointRootError

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.catalog import Catalog

__all__ = [
    "config_options",
    "gc_paused",
    "human_bytes",
    "parse_size",
    "scan_root",
    "select_root",
]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
    "T": 10**12, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def config_options(fn: F) -> F:
    """``-c/--config JOB.toml`` and repeated ``--set checkpoint.KEY=VALUE``."""
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set checkpoint.keep_last_n=5 (repeatable).",
    )(fn)
    fn = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=str),
        default=None,
        metavar="JOB.toml",
        help="KempnerForge job file whose [checkpoint] table to use "
        "(default: the config recorded in the newest checkpoint, else the defaults).",
    )(fn)
    return fn


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
    directory: str | None, config_path: str | None, overrides: Sequence[str]
) -> tuple[Catalog, ConfigSelection]:
    """:func:`select_root`, and the scan of that root, with one pass over the root.

    The root is scanned first and the recorded config is taken from the catalog (the scan
    reads every metadata.json anyway), instead of reading the newest ones a second time. The
    config and the errors are those of :func:`select_root` followed by ``scan(root)``: a bad
    ``--set`` is reported before a missing root.
    """
    from kempnerforge.checkpoint.store.catalog import scan

    if config_path is not None:
        selection = select_config(None, config_path, overrides)
        root = Path(directory) if directory is not None else Path(selection.config.dir)
        return scan(root), selection
    if directory is not None:
        root = Path(directory)
    else:
        root = Path(select_config(None, None, overrides).config.dir)
    try:
        catalog = scan(root)
    except CheckpointRootError:
        select_config(None, None, overrides)  # a bad override is named first, as select_root does
        raise
    return catalog, select_config(root, None, overrides, catalog=catalog)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, as it was before afterwards.

    A command over thousands of checkpoints allocates tens of thousands of small records and
    strings and creates no reference cycles; the collector, triggered by the allocations
    alone, would re-traverse the growing heap (and every imported module) several times for
    nothing: about a tenth of a 2,000-checkpoint ``kf-ckpt ls``.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_size(text: str) -> int:
    """``5GB`` -> 5_000_000_000, ``512MiB`` -> 536_870_912, ``1024`` -> 1024."""
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 5GB, 512MiB or 1024") from None
    if unit not in _UNITS or value < 0:
        raise click.BadParameter(f"{text!r} is not a size like 5GB, 512MiB or 1024")
    return int(value * _UNITS[unit])


def human_bytes(n: int) -> str:
    """Decimal units, as ``du -h --si`` and disk quotas use: ``1.9 GB``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
