"""``kf-ckpt show``: the tensors of a checkpoint, from its DCP metadata alone.

Thin: parse, call :func:`kempnerforge.checkpoint.export.contents.inspect_checkpoint`, render a
table (or
JSON). torch is imported only when the command runs.
"""

from __future__ import annotations

import json

import click

from kempnerforge.cli._render import human_bytes, render_table

__all__ = ["show"]


@click.command()
@click.argument("src", type=click.Path(path_type=str))
@click.option(
    "--step",
    type=click.IntRange(min=0),
    default=None,
    help="Step to show (default: the newest complete).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def show(src: str, step: int | None, as_json: bool) -> None:
    """List the model tensors of a checkpoint and the size of its optimizer state.

    SRC is a checkpoint root (then --step, default the newest complete checkpoint) or one
    step_N directory. Only the DCP metadata is read, never tensor data.
    """
    from kempnerforge.checkpoint.export.contents import inspect_checkpoint

    contents = inspect_checkpoint(src, step)
    if as_json:
        click.echo(json.dumps(contents.to_json(), indent=2))
        return
    with_stage = contents.pp_stages is not None
    rows = [
        (
            t.name,
            "[" + ", ".join(str(d) for d in t.shape) + "]",
            t.dtype,
            human_bytes(t.size_bytes),
            *([f"pp{t.stage}"] if with_stage else []),
        )
        for t in contents.tensors
    ]
    headers = ("name", "shape", "dtype", "size", *(["stage"] if with_stage else []))
    tokens = f", {contents.tokens_seen:,} tokens seen" if contents.tokens_seen is not None else ""
    click.echo(f"{contents.step_dir} (step {contents.step}{tokens})")
    click.echo(render_table(rows, headers, "l" * len(headers)))
    click.echo(f"model: {len(contents.tensors)} tensors, {human_bytes(contents.model_size_bytes)}")
    click.echo(
        f"optimizer state: {contents.optimizer_tensors} tensors, "
        f"{human_bytes(contents.optimizer_size_bytes)}"
    )
    if contents.other_size_bytes:
        click.echo(f"other state: {human_bytes(contents.other_size_bytes)}")
    for note in contents.notes:
        click.echo(f"kf-ckpt: note: {note}", err=True)
