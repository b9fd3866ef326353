"""Progress and notes shared by the inspection commands (``stats``, ``diff``, ``trace``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["echo_notes", "progress_bar", "step_note"]


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


def step_note(step: int | None) -> str:
    """`` (step 64)`` after a checkpoint's path; nothing for a checkpoint with no step."""
    return "" if step is None else f" (step {step})"
