"""``kf-ckpt diff``: how far the model moved between two checkpoints, per tensor or group.

Thin: parse, call :func:`kempnerforge.checkpoint.export.diff.diff_checkpoints`, render a table
(or JSON). torch is imported only when the command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kempnerforge.cli._inspect import echo_notes, progress_bar, step_note
from kempnerforge.cli._options import selection_options
from kempnerforge.cli._render import echo_json, human_float, render_table

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.diff import DiffRow

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
        return
    click.echo(f"A: {result.path_a}{step_note(result.step_a)}")
    click.echo(f"B: {result.path_b}{step_note(result.step_b)}")
    headers = ("name", "l2_a", "l2_b", "l2_diff", "rel_diff", "cosine", "max_abs_diff")
    rows = [_cells(row) for row in (*result.rows, result.total)]
    click.echo(render_table(rows, headers, "l" + "r" * 6))
    groups = len({r.name for r in result.rows})
    if top is not None:
        click.echo(f"(first {groups} rows by {sort}; total over all {result.matched} tensors)")
    if result.only_in_a:
        click.echo(f"only in A ({len(result.only_in_a)}): {', '.join(result.only_in_a)}")
    if result.only_in_b:
        click.echo(f"only in B ({len(result.only_in_b)}): {', '.join(result.only_in_b)}")
    for m in result.shape_mismatch:
        click.echo(f"shape mismatch: {m.name} {list(m.shape_a)} in A, {list(m.shape_b)} in B")


def _cells(row: DiffRow) -> tuple[str, ...]:
    numbers = (row.l2_a, row.l2_b, row.l2_diff, row.rel_diff, row.cosine, row.max_abs_diff)
    return (row.name, *map(human_float, numbers))
