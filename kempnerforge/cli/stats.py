"""``kf-ckpt stats``: per-tensor statistics of a checkpoint's model part.

Thin: parse, call :func:`kempnerforge.checkpoint.export.stats.checkpoint_stats`, render a table
(or JSON). torch is imported only when the command runs.
"""

from __future__ import annotations

import click

from kempnerforge.cli._inspect import echo_notes, progress_bar, step_note
from kempnerforge.cli._options import selection_options, step_option
from kempnerforge.cli._render import echo_json, human_float, render_table

__all__ = ["stats"]


@click.command()
@click.argument("src", type=click.Path(path_type=str))
@step_option()
@selection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option(
    "--fail-on-nonfinite",
    is_flag=True,
    help="Exit 1 when any NaN or Inf is found (a health check before export or resume).",
)
def stats(
    src: str,
    step: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    fail_on_nonfinite: bool,
) -> None:
    """Statistics of every model tensor of a checkpoint, read in bounded batches.

    SRC is a checkpoint root (then --step, default the newest complete checkpoint) or one
    checkpoint directory. Per tensor: shape, dtype, numel, L2 norm, mean, std (population),
    min, max, largest magnitude, and counts of NaN, Inf and exact zeros, computed in float64
    from the stored values; norm, mean, std, min and max describe the finite values. Then
    totals over the model. The optimizer state is never read.
    """
    from kempnerforge.checkpoint.export.stats import checkpoint_stats

    with progress_bar("reading") as progress:
        result = checkpoint_stats(src, step, include=include, exclude=exclude, progress=progress)
    echo_notes(result.notes)
    if as_json:
        echo_json(result.to_json())
    else:
        rows = [
            (
                t.name,
                "[" + ", ".join(map(str, t.shape)) + "]",
                t.dtype,
                *(human_float(v) for v in (t.l2_norm, t.mean, t.std, t.min, t.max, t.abs_max)),
                t.nan_count,
                t.inf_count,
                t.zero_count,
            )
            for t in result.tensors
        ]
        headers = ("name", "shape", "dtype", "l2_norm", "mean", "std", "min", "max", "abs_max",
                   "nan", "inf", "zeros")  # fmt: skip
        click.echo(f"{result.source}{step_note(result.step)}")
        click.echo(render_table(rows, headers, "lll" + "r" * 9))
        total = result.total
        click.echo(
            f"total: {total.tensors} tensors, {total.numel:,} values, "
            f"l2_norm {human_float(total.l2_norm)}, {total.nan_count} NaN, "
            f"{total.inf_count} Inf"
        )
    if fail_on_nonfinite and result.nonfinite:
        click.echo(
            f"kf-ckpt: error: {result.source} holds {result.total.nan_count} NaN and "
            f"{result.total.inf_count} Inf values; see the nan and inf columns",
            err=True,
        )
        raise click.exceptions.Exit(1)
