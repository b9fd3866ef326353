"""``kf-ckpt show``: the tensors of a checkpoint, from its DCP metadata alone.

Thin: parse, call :func:`kempnerforge.checkpoint.export.contents.inspect_checkpoint`, render
with :mod:`kempnerforge.cli.render.show` (a table, or JSON). torch is imported only when the
command runs.
"""

from __future__ import annotations

import click

from kempnerforge.cli._options import selection_options, step_option
from kempnerforge.cli.render import echo_json, echo_notes
from kempnerforge.cli.render.show import show_document, show_text

__all__ = ["show"]


@click.command()
@click.argument("src", type=click.Path(path_type=str))
@step_option()
@selection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def show(
    src: str,
    step: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """List the model tensors of a checkpoint, the rule that chose them, its top-level groups
    and the size of its optimizer state.

    SRC is a checkpoint root (then --step, default the newest complete checkpoint), one
    checkpoint directory (any directory holding a DCP .metadata, whoever wrote it), or the
    root's latest link. Only the DCP metadata is read (through an allowlist: nothing in it
    runs), never tensor data; gc does not delete the checkpoint while it is read.
    """
    from kempnerforge.checkpoint.export.contents import inspect_checkpoint

    contents = inspect_checkpoint(src, step, include=include, exclude=exclude)
    if as_json:
        echo_json(show_document(contents))
        return
    click.echo(show_text(contents))
    echo_notes(contents.notes)
