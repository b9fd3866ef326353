"""Options and helpers shared by several ``kf-ckpt`` commands (parsing and rendering only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from kempnerforge.checkpoint.selection import ConfigSelection, select_config

__all__ = ["config_options", "human_bytes", "parse_size", "select_root"]

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
