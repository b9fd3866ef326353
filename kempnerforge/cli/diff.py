"""``kf-ckpt diff``: how far the model moved between two checkpoints, per tensor or group.

Thin: parse, call :func:`kempnerforge.checkpoint.export.diff.diff_checkpoints`, render with
:mod:`kempnerforge.cli.render.diff` (a table, or JSON). torch is imported only when the command
runs.
"""

from __future__ import annotations

import click

from kempnerforge.cli._options import selection_options
from kempnerforge.cli.render import echo_json, echo_notes, progress_bar
from kempnerforge.cli.render.diff import diff_text

__all__ = ["diff"]


@click.command()
@click.argument("a", type=click.Path(path_type=str))
@click.argument("b", required=False, type=click.Path(path_type=str))
@click.option(
    "--from",
    "step_from",
    type=click.IntRange(min=0),
    default=None,
    help="Step of A to compare from (A is then a checkpoint root).",
)
@click.option(
    "--to",
    "step_to",
    type=click.IntRange(min=0),
    default=None,
    help="Step to compare to (of B, or of the root A when B is not given).",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=None,
    help="Group tensors by their first K dotted name components (layers.3 for K=2).",
)
@click.option(
    "--sort",
    type=click.Choice(["rel_diff", "name"]),
    default="rel_diff",
    show_default=True,
    help="Row order: largest relative change first, or by name.",
)
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show only the first N rows.")
@selection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def diff(
    a: str,
    b: str | None,
    step_from: int | None,
    step_to: int | None,
    depth: int | None,
    sort: str,
    top: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """Compare the model tensors of two checkpoints: A B, or ROOT --from N --to M.

    Per tensor (or group, with --depth) present in both: the norms of A and B, the norm of
    B - A, its ratio to the norm of A, the cosine similarity and the largest absolute
    difference. Groups aggregate exactly (as one concatenated vector). Tensors only in A, only
    in B, or with different shapes are listed after the table. One batch of each side is read
    at a time; the optimizer state is never read.
    """
    from kempnerforge.checkpoint.export.diff import diff_checkpoints

    if b is None and (step_from is None or step_to is None):
        raise click.UsageError(
            "pass two checkpoints (kf-ckpt diff A B) or a root and two steps "
            "(kf-ckpt diff ROOT --from N --to M)"
        )
    with progress_bar("reading") as progress:
        result = diff_checkpoints(
            a,
            a if b is None else b,
            step_a=step_from,
            step_b=step_to,
            depth=depth,
            sort="name" if sort == "name" else "rel_diff",
            top=top,
            include=include,
            exclude=exclude,
            progress=progress,
        )
    echo_notes(result.notes)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(diff_text(result, sort=sort, top=top))
