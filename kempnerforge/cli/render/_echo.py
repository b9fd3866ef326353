"""Printing in the house format: data on stdout, warnings, notes and progress on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from kempnerforge.cli._text import escape

__all__ = ["echo_json", "echo_notes", "echo_warnings", "progress_bar"]


def echo_json(document: dict[str, Any]) -> None:
    """One JSON document on one line of stdout (JSON Lines when appended to a log).

    Compact on purpose: the C encoder writes 2,000 checkpoints in milliseconds, where an
    indented dump takes a tenth of a second; pipe through ``python -m json.tool`` to read it.
    """
    click.echo(json.dumps(document))


def echo_warnings(lines: Iterable[str]) -> None:
    """Each line as ``kf-ckpt: warning: ...`` on stderr (control characters escaped)."""
    for line in lines:
        click.echo(f"kf-ckpt: warning: {escape(line)}", err=True)


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
