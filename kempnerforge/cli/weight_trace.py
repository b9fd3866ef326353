"""``kf-ckpt trace``: weight norms and relative changes across a run's checkpoints.

Thin: parse, call :func:`kempnerforge.checkpoint.export.weight_trace.trace_checkpoints`, render with
:mod:`kempnerforge.cli.render.weight_trace` (a table with sparklines, or JSON, or CSV), and draw the
figure with :func:`kempnerforge.checkpoint.export.trace_plot.plot_trace` when asked. torch is
imported only when the command runs, matplotlib only with --plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from kempnerforge.cli._options import selection_options
from kempnerforge.cli.render import echo_json, echo_notes, progress_bar
from kempnerforge.cli.render.weight_trace import plot_written, trace_csv, trace_text

__all__ = ["trace"]


StepsOption = Literal["all", "milestones"] | list[int]


def _steps(ctx: click.Context, param: click.Parameter, value: str) -> StepsOption:
    text = value.strip()
    if text == "all":
        return "all"
    if text == "milestones":
        return "milestones"
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        steps = []
    if not steps or any(s < 0 for s in steps):
        raise click.BadParameter(f"{value!r} is not 'all', 'milestones' or steps like 0,1,2,4")
    return steps


@click.command()
@click.argument("root", type=click.Path(path_type=str))
@click.option(
    "--steps",
    default="all",
    show_default=True,
    callback=_steps,
    metavar="all|milestones|N,M,...",
    help="Which complete checkpoints: all, the window's milestones, or a list of steps.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=None,
    help="Group tensors by their first K dotted name components (default: one per tensor).",
)
@selection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one line per (step, group).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE.png|FILE.svg",
    help="Also draw norms and relative changes against the step (needs kempnerforge[plot]).",
)
def trace(
    root: str,
    steps: StepsOption,
    depth: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    as_csv: bool,
    plot: Path | None,
) -> None:
    """Trace weight norms and relative changes across the checkpoints of ROOT.

    Over the selected complete checkpoints in step order, per group and for the whole model:
    the L2 norm at each step, and the relative change from the previous selected step,
    ‖θᵢ − θᵢ₋₁‖ / ‖θᵢ₋₁‖. Each checkpoint is read once and memory stays at about two
    batches, whatever the number of checkpoints. Incomplete checkpoints are skipped with a note.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive: pick one output format")
    if plot is not None:  # fail before reading anything
        from kempnerforge.checkpoint.export.trace_plot import check_plot_path, require_matplotlib

        check_plot_path(plot)
        require_matplotlib()
    from kempnerforge.checkpoint.export.weight_trace import trace_checkpoints

    with progress_bar("reading") as progress:
        result = trace_checkpoints(
            root, steps=steps, depth=depth, include=include, exclude=exclude, progress=progress
        )
    echo_notes(result.notes)
    if plot is not None:
        from kempnerforge.checkpoint.export.trace_plot import plot_trace

        plot_trace(result, plot)
        click.echo(plot_written(plot), err=True)
    if as_json:
        echo_json(result.to_json())
    elif as_csv:
        click.echo(trace_csv(result), nl=False)
    else:
        click.echo(trace_text(result))
