"""``kf-ckpt ls``: the checkpoints on disk and what gc would do with each (no torch import).

Thin: parse, scan the selected root (:func:`kempnerforge.checkpoint.store.selection.scan_root`),
plan retention, render with :mod:`kempnerforge.cli.render.ls` (a table, or JSON).
"""

from __future__ import annotations

import click

from kempnerforge.checkpoint.store.retention import plan_retention
from kempnerforge.checkpoint.store.selection import scan_root
from kempnerforge.cli._options import config_options, gc_paused
from kempnerforge.cli.render import echo_json, echo_warnings, now_s
from kempnerforge.cli.render.ls import FILTERS, LsView, ls_document, ls_table, ls_warnings

__all__ = ["ls"]


def _sort_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    key = value.strip()
    name = key.removeprefix("-")
    if name in ("step", "size", "age") or (name.startswith("metric:") and len(name) > 7):
        return key
    raise click.BadParameter(
        f"{value!r} is not a sort key; use step, size, age or metric:NAME, with a leading - "
        "for descending order (e.g. --sort=-size, --sort metric:eval_loss)"
    )


@click.command("ls")
@click.argument("directory", metavar="[DIR]", required=False)
@config_options
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="NAME",
    help="Add a column with this metric recorded at save time (repeatable).",
)
@click.option(
    "--sort",
    "sort_key",
    default="step",
    show_default=True,
    callback=_sort_key,
    metavar="KEY",
    help="Order by step, size, age or metric:NAME, ascending; prefix - for descending "
    "(--sort=-size). Checkpoints without the metric come last.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    type=click.Choice(FILTERS),
    help="Show only pinned, milestone, deletable (gc would delete it) or incomplete "
    "checkpoints (repeatable: any of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def ls(
    directory: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    metrics: tuple[str, ...],
    sort_key: str,
    filters: tuple[str, ...],
    as_json: bool,
) -> None:
    """List the checkpoints under DIR, oldest first: step, status (complete, corrupt,
    incomplete, in-flight), size, tokens seen, age, marks (latest, milestone, pinned), and what
    gc would do with it and why; the note of each pin. Saves not yet published are listed after
    them: in-flight (its writer is alive), abandoned (its writer is gone) or set-aside (an old
    copy a re-save replaced). The footer gives the count, the total size and what gc would
    free; --json adds the lineage (the job that owns the root, the checkpoint its run resumed
    from).

    --metric adds a column per metric recorded with the save (save(..., metrics=...)); --sort
    and --filter pick the order and the rows, also of --json. Without a retention policy (no
    job file, no config recorded in the root, no keep_last_n given), every checkpoint is listed
    as kept: gc deletes nothing then.

    DIR defaults to checkpoint.dir of the config: the job file (--config), else the policy
    recorded by 'kf-ckpt mark', else the config recorded in the newest checkpoint that has one,
    else the defaults; --set overrides apply on top. Entries that are not checkpoints, and
    unreadable files, are reported on stderr.

    Example: kf-ckpt ls runs/llama/checkpoints --metric eval_loss --sort metric:eval_loss
    """
    with gc_paused():
        catalog, selection = scan_root(directory, config_path, overrides, verify=True)
        plan = plan_retention(catalog, selection.config if selection.has_policy else None)
        echo_warnings(ls_warnings(catalog, selection))
        view = LsView(metrics=metrics, sort=sort_key, filters=filters)
        if as_json:
            echo_json(ls_document(catalog, plan, selection, view=view))
        else:
            click.echo(ls_table(catalog, plan, selection, now_s=now_s(), view=view))
