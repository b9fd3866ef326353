"""``kf-ckpt show``: the tensors of a checkpoint, from its DCP metadata alone.

Thin: parse, call :func:`kempnerforge.checkpoint.export.contents.inspect_checkpoint`, render a
table (or
JSON). torch is imported only when the command runs.
"""

from __future__ import annotations

import json

import click

from kempnerforge.cli._options import selection_options, step_option
from kempnerforge.cli._render import human_bytes, render_table, rule_text
from kempnerforge.cli._text import escape

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
        # The conventions of the other commands' documents (docs/reference/json.rst).
        document = {"format": "kf-ckpt-show", "format_version": 1, **contents.to_json()}
        click.echo(json.dumps(document))
        return
    with_stage = contents.pp_stages is not None
    rows = [
        (
            escape(t.name),
            "[" + ", ".join(str(d) for d in t.shape) + "]",
            t.dtype,
            human_bytes(t.size_bytes),
            *((f"pp{t.stage}",) if with_stage else ()),
        )
        for t in contents.tensors
    ]
    headers = ("name", "shape", "dtype", "size", *(("stage",) if with_stage else ()))
    tokens = f", {contents.tokens_seen:,} tokens seen" if contents.tokens_seen is not None else ""
    which = f"step {contents.step}" if contents.step is not None else "step unknown"
    click.echo(f"{escape(str(contents.step_dir))} ({which}{tokens})")
    click.echo(render_table(rows, headers, "l" * len(headers)))
    excluded = (
        f", {contents.excluded_by_pattern} more left out by --exclude"
        if contents.excluded_by_pattern
        else ""
    )
    click.echo(
        f"model: {len(contents.tensors)} tensors, {human_bytes(contents.model_size_bytes)}, "
        f"chosen by {rule_text(contents.rule)}{excluded}"
    )
    click.echo(
        "groups: "
        + ", ".join(
            f"{g.name} ({g.tensors}, {human_bytes(g.size_bytes)})" for g in contents.groups[:12]
        )
        + (f", ... ({len(contents.groups)} groups)" if len(contents.groups) > 12 else "")
    )
    click.echo(
        f"optimizer state: {contents.optimizer_tensors} tensors, "
        f"{human_bytes(contents.optimizer_size_bytes)}"
    )
    if contents.other_size_bytes:
        click.echo(f"other state: {human_bytes(contents.other_size_bytes)}")
    for note in contents.notes:
        click.echo(f"kf-ckpt: note: {escape(note)}", err=True)
