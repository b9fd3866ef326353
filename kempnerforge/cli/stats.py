"""``kf-ckpt stats``: per-tensor statistics of a checkpoint's model part.

Thin: parse, call :func:`kempnerforge.checkpoint.export.stats.checkpoint_stats`, render with
:mod:`kempnerforge.cli.render.stats` (a table, or JSON). torch is imported only when the command
runs.
"""

from __future__ import annotations

import click

from kempnerforge.cli._options import selection_options, step_option
from kempnerforge.cli.render import echo_json, echo_notes, progress_bar
from kempnerforge.cli.render.stats import nonfinite_error, stats_text

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
        click.echo(stats_text(result))
    if fail_on_nonfinite and result.nonfinite:
        click.echo(f"kf-ckpt: error: {nonfinite_error(result)}", err=True)
        raise click.exceptions.Exit(1)
