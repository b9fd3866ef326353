"""Rendering for ``kf-ckpt ls``, ``gc`` and ``plan``: tables for people, JSON documents for scripts.

The only place where sizes, token counts and ages become human text (``1.9 GB``, ``52.4B``,
``3 h ago``); the library records carry raw numbers. The ``ls`` and ``gc`` views live here (they
show the same catalog and retention plan); ``plan``'s view of a simulated run lives with its
command and formats through the helpers here. The JSON documents are described in
``docs/reference/json.rst``; change both together, and bump ``FORMAT_VERSION`` when a field
changes meaning or goes away.

Ages are relative to :func:`now_s`, which reads ``KF_CKPT_NOW_S`` (seconds since the epoch) when
it is set, so that tests and documentation examples print the same ages on every run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from kempnerforge.cli._options import human_bytes
from kempnerforge.config.loader import config_to_dict

if TYPE_CHECKING:
    from kempnerforge.checkpoint.catalog import Catalog, CheckpointInfo
    from kempnerforge.checkpoint.gc import DeletionFailure, GcResult, SkippedDeletion
    from kempnerforge.checkpoint.retention import Decision, Reason, RetentionPlan
    from kempnerforge.checkpoint.selection import ConfigSelection

__all__ = [
    "FORMAT_VERSION",
    "NOW_ENV",
    "echo_json",
    "echo_warnings",
    "gc_document",
    "gc_table",
    "human_age",
    "human_count",
    "ls_document",
    "ls_table",
    "now_s",
    "reason_text",
]

NOW_ENV = "KF_CKPT_NOW_S"
FORMAT_VERSION = 1


def now_s() -> float:
    """The current time, or ``$KF_CKPT_NOW_S`` when set (for reproducible ages)."""
    fixed = os.environ.get(NOW_ENV)
    if not fixed:
        return time.time()
    try:
        return float(fixed)
    except ValueError:
        raise click.UsageError(f"{NOW_ENV}={fixed!r} must be seconds since the epoch") from None


def human_age(age_s: float) -> str:
    """``42 s ago``, ``5 min ago``, ``3 h ago`` (below two days), ``12 d ago``; whole units."""
    if age_s < 0:
        return "in the future"
    for unit, size_s, below_s in (("s", 1, 60), ("min", 60, 3600), ("h", 3600, 172800)):
        if age_s < below_s:
            return f"{int(age_s // size_s)} {unit} ago"
    return f"{int(age_s // 86400)} d ago"


def human_count(n: int | None) -> str:
    """Token counts: ``950``, ``12.3k``, ``4.2M``, ``52.4B``, ``1.3T``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "k", "M", "B"):
        if abs(value) < 1000:
            return f"{n}" if not unit else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def reason_text(reason: Reason, keep_last_n: int) -> str:
    """A retention reason in words, with the keep_last_n it was planned with."""
    return {
        "latest": "latest",
        "milestone": "dynamic milestone",
        "in_flight": "in flight: newer than the newest complete",
        "unreadable": "unreadable: kept until it can be judged",
        "within_keep_last_n": f"within keep_last_n={keep_last_n}",
        "newest_complete": "newest complete",
        "keep_all": f"keep_last_n={keep_last_n} keeps all",
        "beyond_keep_last_n": f"beyond keep_last_n={keep_last_n}",
        "abandoned_incomplete": "incomplete, older than the newest complete",
    }.get(str(reason), str(reason).replace("_", " "))


def echo_warnings(lines: Iterable[str]) -> None:
    """Each line as ``kf-ckpt: warning: ...`` on stderr."""
    for line in lines:
        click.echo(f"kf-ckpt: warning: {line}", err=True)


def echo_json(document: dict[str, Any]) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(document, indent=2))


def catalog_warnings(catalog: Catalog) -> list[str]:
    """Skipped entries (not the toolkit's own), an ignored ``latest``, unreadable metadata."""
    lines = [f"skipped {s.name}: {s.reason}" for s in catalog.skipped if not s.toolkit_entry]
    lines += catalog.warnings
    for info in catalog.checkpoints:
        lines += [f"{info.name}: {warning}" for warning in info.warnings]
    return lines


def render_table(rows: list[tuple[Any, ...]], headers: tuple[str, ...], align: str) -> str:
    """A plain-text table; ``align`` has one letter per column, ``r`` (numbers) or ``l``."""
    from tabulate import tabulate  # imported here: --json output does not pay for it

    colalign = tuple("right" if a == "r" else "left" for a in align)
    return tabulate(
        rows, headers=headers, tablefmt="simple", disable_numparse=True, colalign=colalign
    )


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def config_document(selection: ConfigSelection) -> dict[str, Any]:
    path = selection.source_path
    return {
        "source": selection.source,
        "path": None if path is None else str(path),
        "checkpoint": config_to_dict(selection.config),
    }


def _skipped_document(catalog: Catalog) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "path": str(s.path), "reason": s.reason, "toolkit_entry": s.toolkit_entry}
        for s in catalog.skipped
    ]


# ---- ls ---------------------------------------------------------------------------------------


def _ls_rows(
    catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection
) -> list[tuple[CheckpointInfo, Decision | None, str, bool]]:
    """(checkpoint, decision, status, milestone) oldest first.

    The milestone mark shows the recorded flag or the config's window, the two things retention
    reads, also where retention keeps the checkpoint for an earlier reason (``latest``).
    """
    by_step = {d.step: d for d in plan.decisions}
    rows = []
    for info in catalog.checkpoints:
        decision = by_step.get(info.step)
        in_flight = decision is not None and decision.reason == "in_flight"
        status = "complete" if info.complete else "in-flight" if in_flight else "incomplete"
        milestone = info.dynamic_milestone or selection.config.is_dynamic_milestone(info.step)
        rows.append((info, decision, status, milestone))
    return rows


def ls_table(
    catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection, *, now_s: float
) -> str:
    """The ``kf-ckpt ls`` table and its footer (count, total size, what gc would free)."""
    if not catalog.checkpoints:
        return f"no checkpoints under {catalog.root}"
    rows = [
        (
            info.step,
            status,
            human_bytes(info.size_bytes),
            human_count(info.tokens_seen),
            human_age(now_s - info.mtime_s),
            ",".join(m for m, on in (("latest", info.is_latest), ("milestone", milestone)) if on),
            "-" if decision is None else decision.action,
            "" if decision is None else reason_text(decision.reason, plan.keep_last_n),
        )
        for info, decision, status, milestone in _ls_rows(catalog, plan, selection)
    ]
    headers = ("step", "status", "size", "tokens", "age", "marks", "gc", "why")
    table = render_table(rows, headers, "rlrrllll")
    victims = plan.to_delete
    gc_text = (
        f"gc would delete {len(victims)} ({human_bytes(plan.bytes_freed)})"
        if victims
        else "gc would delete nothing"
    )
    count = plural(len(catalog.checkpoints), "checkpoint")
    return f"{table}\n\n{count}, {human_bytes(catalog.total_size_bytes)}; {gc_text}"


def ls_document(
    catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection
) -> dict[str, Any]:
    """The ``kf-ckpt ls --json`` document (schema in docs/reference/json.rst)."""
    checkpoints = [
        {
            "step": info.step,
            "path": str(info.path),
            "status": status,
            "incomplete_reason": info.incomplete_reason,
            "latest": info.is_latest,
            "milestone": milestone,
            "tokens_seen": info.tokens_seen,
            "size_bytes": info.size_bytes,
            "file_count": info.file_count,
            "mtime_s": info.mtime_s,
            "gc_action": None if decision is None else str(decision.action),
            "gc_reason": None if decision is None else str(decision.reason),
            "gc_detail": None if decision is None else decision.detail,
            "warnings": list(info.warnings),
        }
        for info, decision, status, milestone in _ls_rows(catalog, plan, selection)
    ]
    return {
        "format": "kf-ckpt-ls",
        "format_version": FORMAT_VERSION,
        "root": str(catalog.root),
        "config": config_document(selection),
        "latest": catalog.latest.step,
        "checkpoints": checkpoints,
        "skipped": _skipped_document(catalog),
        "warnings": catalog_warnings(catalog),
        "count": len(catalog.checkpoints),
        "size_bytes": catalog.total_size_bytes,
        "gc_delete_count": len(plan.to_delete),
        "gc_bytes_freed": plan.bytes_freed,
    }


# ---- gc ---------------------------------------------------------------------------------------

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
    if applied is not None and applied.trash_cleared:
        summary += f"; removed {applied.trash_cleared} leftover trash entries"
    return f"{table}\n\n{summary}"


def _problems(items: Iterable[DeletionFailure | SkippedDeletion]) -> list[dict[str, Any]]:
    return [{"step": i.step, "path": str(i.path), "reason": i.reason} for i in items]


def gc_warnings(result: GcResult) -> list[str]:
    """The scan's warnings and the apply's (a failed fsync, ...)."""
    applied = [] if result.applied is None else list(result.applied.warnings)
    return [*catalog_warnings(result.catalog), *applied]


def gc_document(result: GcResult, selection: ConfigSelection) -> dict[str, Any]:
    """The ``kf-ckpt gc --json`` document (schema in docs/reference/json.rst)."""
    plan, applied = result.plan, result.applied
    outcomes = _outcomes(result)
    decisions = [
        {
            "step": d.step,
            "path": str(d.path),
            "action": str(d.action),
            "reason": str(d.reason),
            "detail": d.detail,
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
        "skipped_entries": _skipped_document(result.catalog),
        "warnings": gc_warnings(result),
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
