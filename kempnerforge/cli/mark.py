"""``kf-ckpt mark``: teach an existing root its milestones and retention policy (no torch).

A thin shell over :func:`kempnerforge.checkpoint.store.policy.mark_root`, rendered with
:mod:`kempnerforge.cli.render.mark`.
"""

from __future__ import annotations

from typing import Any

import click

from kempnerforge.checkpoint.store.policy import mark_root
from kempnerforge.checkpoint.store.resolve import split_checkpoint_path
from kempnerforge.cli._options import config_file_option, wait_lock_option
from kempnerforge.cli.render import echo_json
from kempnerforge.cli.render.mark import mark_document, mark_text
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.config.loader import load_config

__all__ = ["mark"]


def _window(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    span, _, strategy = value.partition(":")
    start, sep, stop = span.partition("..")
    try:
        if not sep:
            raise ValueError("expected START..STOP")
        return DynamicCheckpointWindow(
            start=int(start), stop=int(stop), strategy=strategy.strip() or "power2"
        )
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: {exc}; write it as START..STOP or START..STOP:STRATEGY, e.g. 0..8:power2"
        ) from None


@click.command("mark")
@click.argument("root", metavar="ROOT")
@config_file_option(
    "The run's job file: mark its window's milestones and record its [checkpoint] table "
    "as ROOT's retention policy."
)
@click.option(
    "--window",
    callback=_window,
    metavar="START..STOP[:STRATEGY]",
    help="Mark the milestones of this window only (strategy default power2); records no policy.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be marked and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@wait_lock_option
def mark(
    root: str,
    config_path: str | None,
    window: DynamicCheckpointWindow | None,
    dry_run: bool,
    as_json: bool,
    wait_lock: float,
) -> None:
    """Teach an existing checkpoint root (written by upstream KempnerForge or another tool,
    or whose config was lost) its dynamic milestones and its retention policy, once.

    For each complete checkpoint that the window makes a milestone, records
    "dynamic_milestone": true in its metadata.json (created if missing, other keys kept,
    written atomically), so that every later gc keeps it. With -c, also records the job file's
    [checkpoint] table in ROOT/.kf-ckpt.policy, where ls, gc and plan find it without -c.
    Marking again changes nothing. Takes ROOT's lock, as gc does.

    Exit codes: 0 done (also "nothing to mark"), 2 bad input (no such root, a bad window or
    job file), 75 lock still busy after --wait-lock.

    Example: kf-ckpt mark runs/upstream/checkpoints -c job.toml
    """
    if (config_path is None) == (window is None):
        raise click.UsageError(
            "give the window to mark: either -c JOB.toml or --window START..STOP"
        )
    path, step = split_checkpoint_path(root)
    if step is not None:
        raise click.UsageError(
            f"{root} is the checkpoint directory of step {step}; pass its root, {path}"
        )
    if config_path is not None:
        config = load_config(config_path)
    else:
        config = CheckpointConfig(dyn_ckpt_window=window)
    result = mark_root(
        path,
        config,
        record_policy=config_path is not None,
        policy_source=config_path,
        dry_run=dry_run,
        wait_lock_s=wait_lock,
    )
    if as_json:
        echo_json(mark_document(result, config, config_path))
    else:
        click.echo(mark_text(result, config))
