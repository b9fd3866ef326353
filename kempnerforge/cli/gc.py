"""``kf-ckpt gc``: delete the checkpoints retention no longer keeps (no torch import)."""

from __future__ import annotations

import dataclasses

import click

from kempnerforge.checkpoint.gc import collect_garbage
from kempnerforge.cli._options import config_options, select_root
from kempnerforge.cli._render import (
    echo_json,
    echo_warnings,
    gc_document,
    gc_failure,
    gc_table,
    gc_warnings,
)
from kempnerforge.errors import RetentionError

__all__ = ["gc"]


@click.command("gc")
@click.argument("directory", metavar="[DIR]", required=False)
@config_options
@click.option(
    "--keep-last-n",
    type=int,
    default=None,
    metavar="N",
    help="Keep the newest N complete non-milestone checkpoints (wins over the config; "
    "<= 0 keeps all).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option(
    "--wait-lock",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the checkpoint root's lock; still busy after that: exit 75.",
)
def gc(
    directory: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    keep_last_n: int | None,
    dry_run: bool,
    as_json: bool,
    wait_lock: float,
) -> None:
    """Delete the checkpoints under DIR that retention no longer keeps, and print what was kept
    and deleted, why, and the bytes freed.

    Never deleted: the latest target, dynamic milestones (by the config's window or the flag
    recorded in metadata.json), saves that may still be in flight, the newest keep_last_n
    complete checkpoints and the newest complete one, and anything that is not a step_<N>
    directory in DIR. Scan, plan and deletion happen under DIR's lock, the one training takes.

    DIR defaults to checkpoint.dir of the config: the job file (--config), else the config
    recorded in the newest checkpoint, else the defaults; --set overrides apply on top and
    --keep-last-n wins over both. Exit codes: 0 done (also nothing to do), 1 a deletion failed
    (each directory and reason on stderr), 2 usage or config error, 75 lock still busy after
    --wait-lock (nothing deleted; retry later).

    Example: kf-ckpt gc runs/llama/checkpoints -c job.toml --wait-lock 60
    """
    root, selection = select_root(directory, config_path, overrides)
    if keep_last_n is not None:
        config = dataclasses.replace(selection.config, keep_last_n=keep_last_n)
        selection = dataclasses.replace(selection, config=config)
    result = collect_garbage(root, selection.config, wait_lock_s=wait_lock, dry_run=dry_run)
    echo_warnings(gc_warnings(result))
    if as_json:
        echo_json(gc_document(result, selection))
    else:
        click.echo(gc_table(result))
    failure = gc_failure(result)
    if failure is not None:
        raise RetentionError(failure)
