"""The ``kf-ckpt gc`` view of a gc round: the table of what was kept and deleted, the JSON
document, the warnings, and the messages that name a refused root or each failed deletion."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.apply import NotDeleted
from kempnerforge.checkpoint.store.collect import GcResult
from kempnerforge.checkpoint.store.retention import Reason
from kempnerforge.checkpoint.store.selection import ConfigSelection
from kempnerforge.cli.render import (
    FORMAT_VERSION,
    catalog_warnings,
    config_document,
    human_bytes,
    plural,
    reason_text,
    render_table,
    skipped_document,
)
from kempnerforge.cli.render._decisions import decision_detail

__all__ = [
    "gc_document",
    "gc_failure",
    "gc_table",
    "gc_warnings",
    "milestone_warning",
    "no_policy_message",
]


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
