"""``kf-ckpt gc``: delete the checkpoints retention no longer keeps (no torch import).

The command, and its view of a gc round: the table of what was kept and deleted, the JSON
document, and the error that names each failed deletion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from kempnerforge.checkpoint.store.apply import NotDeleted
from kempnerforge.checkpoint.store.collect import GcResult, collect_garbage
from kempnerforge.checkpoint.store.policy import likely_milestones
from kempnerforge.checkpoint.store.retention import Reason
from kempnerforge.checkpoint.store.selection import ConfigSelection, select_root
from kempnerforge.cli._decisions import decision_detail
from kempnerforge.cli._options import config_options, wait_lock_option
from kempnerforge.cli._render import (
    FORMAT_VERSION,
    catalog_warnings,
    config_document,
    echo_json,
    echo_warnings,
    human_bytes,
    plural,
    reason_text,
    render_table,
    skipped_document,
)
from kempnerforge.errors import ConfigError, RetentionError

__all__ = ["gc", "gc_document", "gc_failure", "gc_table"]


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
    # warning, given before anything is deleted (from a plan made first).
    unmarked = config is not None and config.dyn_ckpt_window is None
    likely: tuple[int, ...] = ()
    if unmarked and not dry_run:
        preview = collect_garbage(root, config, dry_run=True)
        likely = likely_milestones(d.step for d in preview.plan.to_delete)
        echo_warnings([milestone_warning(root, likely)] if likely else [])
    result = collect_garbage(root, config, wait_lock_s=wait_lock, dry_run=dry_run)
    if unmarked and dry_run:
        likely = likely_milestones(d.step for d in result.plan.to_delete)
        echo_warnings([milestone_warning(root, likely)] if likely else [])
    echo_warnings(gc_warnings(result))
    if as_json:
        echo_json(gc_document(result, selection, likely_milestones=likely))
    else:
        click.echo(gc_table(result))
    failure = gc_failure(result)
    if failure is not None:
        raise RetentionError(failure)


_OUTCOME_TEXT = {
    "kept": "keep",
    "would_delete": "would delete",
    "deleted": "deleted",
    "vanished": "gone",
    "skipped": "skipped",
    "failed": "FAILED",
}


def _outcomes(result: GcResult) -> dict[int, tuple[str, str | None]]:
    """step -> (outcome, note) for every victim; checkpoints not in it are kept."""
    applied = result.applied
    if applied is None:
        return {d.step: ("would_delete", None) for d in result.plan.to_delete}
    outcomes: dict[int, tuple[str, str | None]] = {
        d.step: ("deleted", None) for d in applied.deleted
    }
    outcomes |= {d.step: ("vanished", "already gone") for d in applied.vanished}
    outcomes |= {s.step: ("skipped", s.reason) for s in applied.skipped}
    outcomes |= {f.step: ("failed", f.reason) for f in applied.failed}
    return outcomes


def gc_table(result: GcResult) -> str:
    """The ``kf-ckpt gc`` table (each checkpoint, its action and why) and a summary line."""
    plan, applied = result.plan, result.applied
    outcomes = _outcomes(result)
    rows = []
    for d in plan.decisions:
        outcome, note = outcomes.get(d.step, ("kept", None))
        why = reason_text(d.reason, plan.keep_last_n)
        if d.reason is Reason.pinned and d.pin_note:
            why += f": {d.pin_note}"
        action = _OUTCOME_TEXT[outcome]
        rows.append((d.step, human_bytes(d.size_bytes), action, f"{why}; {note}" if note else why))
    if not rows:
        return f"no checkpoints under {plan.root}; nothing to delete"
    table = render_table(rows, ("step", "size", "action", "why"), "rrll")
    total, victims = len(plan.decisions), plan.to_delete
    if applied is None:
        summary = (
            f"dry run: would delete {len(victims)} of {total} checkpoints, freeing "
            f"{human_bytes(plan.bytes_freed)}; nothing was deleted"
        )
    elif not victims:
        summary = f"nothing to delete; kept {plural(total, 'checkpoint')}"
    else:
        summary = (
            f"deleted {len(applied.deleted)} of {total} checkpoints, freed "
            f"{human_bytes(applied.bytes_freed)}"
        )
        extras = ((applied.vanished, "already gone"), (applied.skipped, "skipped"))
        summary += "".join(f"; {len(items)} {what}" for items, what in extras if items)
        summary += f"; {len(applied.failed)} failed" if applied.failed else ""
    if applied is not None and applied.in_place:
        summary += " (deleted in place: no space for the trash)"
    if applied is not None and applied.trash_cleared:
        summary += f"; removed {applied.trash_cleared} leftover trash entries"
    return f"{table}\n\n{summary}"


def _problems(items: Iterable[NotDeleted]) -> list[dict[str, Any]]:
    return [{"step": i.step, "path": str(i.path), "reason": i.reason} for i in items]


def gc_warnings(result: GcResult) -> list[str]:
    """The scan's warnings and the apply's (a failed fsync, ...)."""
    applied = [] if result.applied is None else list(result.applied.warnings)
    return [*catalog_warnings(result.catalog), *applied]


def no_policy_message(root: Path) -> str:
    """Why gc refuses a root without a known retention policy, and the ways to give one."""
    return (
        f"no retention policy for {root}: no job file was given, and neither the root nor its "
        f"checkpoints record a config; nothing was deleted. Give one with -c JOB.toml (the "
        f"run's job file) or --keep-last-n N, or record it once with "
        f"'kf-ckpt mark {root} -c JOB.toml'"
    )


def milestone_warning(root: Path, steps: tuple[int, ...]) -> str:
    """The warning about deleting what looks like an unmarked window's milestones."""
    return (
        f"steps {', '.join(map(str, steps))} look like the milestones of a dynamic checkpoint "
        f"window, but the config has no window and gc deletes them; if they are, pass the run's "
        f"job file with -c JOB.toml, or record it with 'kf-ckpt mark {root} -c JOB.toml'"
    )


def gc_document(
    result: GcResult,
    selection: ConfigSelection,
    *,
    likely_milestones: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The ``kf-ckpt gc --json`` document (schema in docs/reference/json.rst)."""
    plan, applied = result.plan, result.applied
    outcomes = _outcomes(result)
    decisions = [
        {
            "step": d.step,
            "path": str(d.path),
            "action": str(d.action),
            "reason": str(d.reason),
            "detail": decision_detail(d),
            "size_bytes": d.size_bytes,
            "outcome": outcomes.get(d.step, ("kept", None))[0],
        }
        for d in plan.decisions
    ]
    return {
        "format": "kf-ckpt-gc",
        "format_version": FORMAT_VERSION,
        "root": str(plan.root),
        "dry_run": applied is None,
        "config": config_document(selection),
        "decisions": decisions,
        "bytes_to_free": plan.bytes_freed,
        "deleted": [] if applied is None else [d.step for d in applied.deleted],
        "vanished": [] if applied is None else [d.step for d in applied.vanished],
        "skipped": [] if applied is None else _problems(applied.skipped),
        "failed": [] if applied is None else _problems(applied.failed),
        "bytes_freed": 0 if applied is None else applied.bytes_freed,
        "trash_cleared": 0 if applied is None else applied.trash_cleared,
        "in_place": False if applied is None else applied.in_place,
        "skipped_entries": skipped_document(result.catalog),
        "warnings": [
            *([milestone_warning(plan.root, likely_milestones)] if likely_milestones else []),
            *gc_warnings(result),
        ],
        "likely_milestones": list(likely_milestones),
    }


def gc_failure(result: GcResult) -> str | None:
    """The error message for failed deletions, naming each directory and why; else None."""
    failed = () if result.applied is None else result.applied.failed
    if not failed:
        return None
    root = result.plan.root
    items = "; ".join(f"{f.path}: {f.reason}" for f in failed)
    return (
        f"could not delete {plural(len(failed), 'checkpoint')} under {root}: {items}; "
        f"fix the cause, then run 'kf-ckpt gc {root}' again"
    )
