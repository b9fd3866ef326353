"""``kf-ckpt mark``: teach an existing root its milestones and retention policy (no torch).

A thin shell over :func:`kempnerforge.checkpoint.store.policy.mark_root`.
"""

from __future__ import annotations

from typing import Any

import click

from kempnerforge.checkpoint.store.policy import MarkResult, mark_root
from kempnerforge.checkpoint.store.resolve import split_checkpoint_path
from kempnerforge.cli._options import wait_lock_option
from kempnerforge.cli._render import FORMAT_VERSION, echo_json, plural, render_table
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.config.loader import config_to_dict, load_config

__all__ = ["mark", "mark_document", "mark_text"]


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
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    metavar="JOB.toml",
    help="The run's job file: mark its window's milestones and record its [checkpoint] table "
    "as ROOT's retention policy.",
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


def _window_text(config: CheckpointConfig) -> str:
    window = config.dyn_ckpt_window
    if window is None:
        return "no window"
    return f"window {window.start}..{window.stop} {window.strategy}"


def mark_text(result: MarkResult, config: CheckpointConfig) -> str:
    """What ``kf-ckpt mark`` did: a table of the milestones, then the policy line."""
    root = result.root
    if not result.checkpoints:
        return f"no checkpoints under {root}; nothing to mark"
    would = result.dry_run
    rows = [(s, "would mark" if would else "marked") for s in result.marked]
    rows += [(s, "already marked") for s in result.already_marked]
    rows += [(s, f"skipped: {why}") for s, why in result.skipped]
    lines = []
    if rows:
        lines += [render_table(sorted(rows), ("step", "milestone"), "rl"), ""]
        done = "would mark" if would else "marked"
        lines.append(
            f"{done} {plural(len(result.marked), 'milestone')} of {_window_text(config)}; "
            f"{len(result.already_marked)} already marked"
            + (f"; {len(result.skipped)} skipped" if result.skipped else "")
        )
    else:
        lines.append(f"nothing to mark: {_window_text(config)} matches no checkpoint under {root}")
    if result.policy_path is not None:
        policy = f"keep_last_n {config.keep_last_n}, {_window_text(config)}"
        if not result.policy_changed:
            lines.append(f"policy unchanged in {result.policy_path} ({policy})")
        elif would:
            lines.append(f"would record the policy ({policy}) in {result.policy_path}")
        else:
            lines.append(
                f"recorded the policy ({policy}) in {result.policy_path}; "
                f"'kf-ckpt gc {root}' now uses it"
            )
    if would:
        lines.append("dry run: nothing was changed")
    return "\n".join(lines)


def mark_document(
    result: MarkResult, config: CheckpointConfig, config_path: str | None
) -> dict[str, Any]:
    """The ``kf-ckpt mark --json`` document (schema in docs/reference/json.rst)."""
    return {
        "format": "kf-ckpt-mark",
        "format_version": FORMAT_VERSION,
        "root": str(result.root),
        "dry_run": result.dry_run,
        "config": {
            "source": "file" if config_path is not None else "window",
            "path": config_path,
            "checkpoint": config_to_dict(config),
        },
        "checkpoint_count": result.checkpoints,
        "marked": list(result.marked),
        "already_marked": list(result.already_marked),
        "skipped": [{"step": s, "reason": why} for s, why in result.skipped],
        "policy": None
        if result.policy_path is None
        else {"path": str(result.policy_path), "changed": result.policy_changed},
    }
