"""Options shared by several ``kf-ckpt`` commands, their parsers, and :func:`gc_paused`."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

__all__ = [
    "config_file_option",
    "config_options",
    "gc_paused",
    "parse_size",
    "selection_options",
    "step_option",
]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
    "T": 10**12, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def step_option(
    help: str = "The step to read when SRC is a checkpoint root (default: the newest complete).",
) -> Callable[[F], F]:
    """``--step N``: which checkpoint of a root a command means."""
    return click.option("--step", type=click.IntRange(min=0), default=None, metavar="N", help=help)


def wait_lock_option(fn: F) -> F:
    """``--wait-lock SECONDS`` (default 0) for the commands that take the root's lock."""
    return click.option(
        "--wait-lock",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        metavar="SECONDS",
        help="How long to wait for the checkpoint root's lock (held by a gc, a pin, a mark or a "
        "save's retention); still busy after that: exit 75.",
    )(fn)


def config_file_option(help_text: str) -> Callable[[F], F]:
    """``-c/--config JOB.toml`` (passed as ``config_path``), with the command's own help text."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=str),
        default=None,
        metavar="JOB.toml",
        help=help_text,
    )


def config_options(fn: F) -> F:
    """``-c/--config JOB.toml`` and repeated ``--set checkpoint.KEY=VALUE``."""
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set checkpoint.keep_last_n=5 (repeatable).",
    )(fn)
    return config_file_option(
        "KempnerForge job file whose [checkpoint] table to use "
        "(default: the config recorded in the newest checkpoint, else the defaults)."
    )(fn)


def selection_options(fn: F) -> F:
    """Repeated ``--include GLOB`` / ``--exclude GLOB``: which tensors are the model part."""
    fn = click.option(
        "--exclude",
        "exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out tensors whose dotted name matches GLOB, e.g. 'output.*' (repeatable).",
    )(fn)
    fn = click.option(
        "--include",
        "include",
        multiple=True,
        metavar="GLOB",
        help="Take the tensors whose dotted name matches GLOB instead of the model part, "
        "e.g. 'ema.*', for layouts kf-ckpt does not know (repeatable).",
    )(fn)
    return fn


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
