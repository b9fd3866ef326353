"""Options and progress shared by the inspection commands (``stats``, ``diff``, ``trace``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

__all__ = ["echo_notes", "inspect_options", "progress_bar"]

F = TypeVar("F", bound=Callable[..., Any])


def inspect_options(fn: F) -> F:
    """Repeatable ``--include GLOB`` / ``--exclude GLOB`` on dotted tensor names."""
    fn = click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out tensors whose dotted name matches GLOB, e.g. embed.* (repeatable).",
    )(fn)
    fn = click.option(
        "--include",
        multiple=True,
        metavar="GLOB",
        help="Only tensors whose dotted name matches GLOB, e.g. layers.* (repeatable).",
    )(fn)
    return fn


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a bar on stderr, on a terminal.

    None when stderr is not a terminal (logs and pipes get no bar).
    """
    if not sys.stderr.isatty():
        yield None
        return
    with contextlib.ExitStack() as stack:
        bar: Any = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False)
                )
            bar.update(done - bar.pos)

        yield progress


def echo_notes(notes: tuple[str, ...] | list[str]) -> None:
    """Each note as ``kf-ckpt: note: ...`` on stderr."""
    for note in notes:
        click.echo(f"kf-ckpt: note: {note}", err=True)
