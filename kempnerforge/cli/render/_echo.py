"""Printing in the house format: notes on stderr, and a progress bar on a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from kempnerforge.cli._text import escape

__all__ = ["echo_notes", "progress_bar"]


def echo_notes(notes: Iterable[str]) -> None:
    """Each note as ``kf-ckpt: note: ...`` on stderr (control characters escaped)."""
    for note in notes:
        click.echo(f"kf-ckpt: note: {escape(note)}", err=True)


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
