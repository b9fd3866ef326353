"""``kf-ckpt gc``: delete the checkpoints retention no longer keeps (no torch import).

Thin: parse, select the root and its config, run
:func:`kempnerforge.checkpoint.store.collect.collect_garbage`, render with
:mod:`kempnerforge.cli.render.collect` (a table, or JSON); failed deletions exit 1.
"""

from __future__ import annotations

import dataclasses

import click

from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.policy import likely_milestones
from kempnerforge.checkpoint.store.retention import RetentionPlan
from kempnerforge.checkpoint.store.selection import select_root
from kempnerforge.cli._options import config_options, wait_lock_option
from kempnerforge.cli.render import echo_json, echo_warnings
from kempnerforge.cli.render.collect import (
    gc_document,
    gc_failure,
    gc_table,
    gc_warnings,
    milestone_warning,
    no_policy_message,
)
from kempnerforge.errors import ConfigError, RetentionError

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
@wait_lock_option
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
    recorded in metadata.json), pinned checkpoints ('kf-ckpt pin'), saves that may still be in
    flight, the newest keep_last_n complete checkpoints and the newest complete one, and
    anything that is not a step_<N> directory in DIR. Scan, plan and deletion happen under
    DIR's lock, the one training takes.

    DIR defaults to checkpoint.dir of the config: the job file (--config), else the policy
    recorded in DIR by 'kf-ckpt mark', else the config recorded in the newest checkpoint that
    has one, else the defaults; --set overrides apply on top and --keep-last-n wins over both.
    No known policy, no deletion: when none of these gives one (a root of upstream KempnerForge
    or another tool, used without a job file), gc deletes nothing and exits 2. When the config
    has no window but the checkpoints to delete look like a power-2 window's milestones, gc
    names them on stderr first.

    Exit codes: 0 done (also nothing to do), 1 a deletion failed (each directory and reason on
    stderr), 2 usage or config error, or no retention policy, 75 lock still busy after
    --wait-lock (nothing deleted; retry later).

    Example: kf-ckpt gc runs/llama/checkpoints -c job.toml --wait-lock 60
    """
    root, selection = select_root(directory, config_path, overrides)
    if keep_last_n is not None:
        given = dataclasses.replace(selection.config, keep_last_n=keep_last_n)
        selection = dataclasses.replace(selection, config=given, has_policy=True)
    config = selection.config if selection.has_policy else None
    if config is None and collect_garbage(root, None, dry_run=True).catalog.checkpoints:
        raise ConfigError(no_policy_message(root))  # an empty root has nothing to protect
    # Without a window, deleting what looks like an unmarked window's milestones gets a
    # warning, given before anything is deleted, about exactly the plan gc carries out.
    likely: list[int] = []

    def warn_milestones(plan: RetentionPlan) -> None:
        likely.extend(likely_milestones(d.step for d in plan.to_delete))
        echo_warnings([milestone_warning(root, tuple(likely))] if likely else [])

    unmarked = config is not None and config.dyn_ckpt_window is None
    result = collect_garbage(
        root,
        config,
        wait_lock_s=wait_lock,
        dry_run=dry_run,
        before_delete=warn_milestones if unmarked else None,
    )
    echo_warnings(gc_warnings(result))
    if as_json:
        echo_json(gc_document(result, selection, likely_milestones=tuple(likely)))
    else:
        click.echo(gc_table(result))
    failure = gc_failure(result)
    if failure is not None:
        raise RetentionError(failure)
