"""``kf-ckpt ls``: the checkpoints on disk and what gc would do with each (no torch import).

The command, and its view of a catalog and a retention plan: the table and the JSON document.
"""

from __future__ import annotations

from typing import Any

import click

from kempnerforge.checkpoint.store.catalog import Catalog, CheckpointInfo
from kempnerforge.checkpoint.store.retention import Decision, Reason, RetentionPlan, plan_retention
from kempnerforge.checkpoint.store.selection import ConfigSelection, scan_root
from kempnerforge.cli._options import config_options, gc_paused
from kempnerforge.cli._render import (
    FORMAT_VERSION,
    catalog_warnings,
    config_document,
    echo_json,
    echo_warnings,
    human_age,
    human_bytes,
    human_count,
    now_s,
    plural,
    reason_text,
    render_table,
    skipped_document,
)

__all__ = ["ls", "ls_document", "ls_table"]


@click.command("ls")
@click.argument("directory", metavar="[DIR]", required=False)
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def ls(
    directory: str | None, config_path: str | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """List the checkpoints under DIR, oldest first: step, status (complete, incomplete,
    in-flight), size, tokens seen, age, marks (latest, milestone), and what gc would do with it
    and why. The footer gives the count, the total size and what gc would free.

    DIR defaults to checkpoint.dir of the config: the job file (--config), else the config
    recorded in the newest checkpoint, else the defaults; --set overrides apply on top. Entries
    that are not checkpoints, and unreadable files, are reported on stderr.

    Example: kf-ckpt ls runs/llama/checkpoints --json
    """
    with gc_paused():
        catalog, selection = scan_root(directory, config_path, overrides)
        plan = plan_retention(catalog, selection.config)
        echo_warnings(catalog_warnings(catalog))
        if as_json:
            echo_json(ls_document(catalog, plan, selection))
        else:
            click.echo(ls_table(catalog, plan, selection, now_s=now_s()))


def _ls_rows(
    catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection
) -> list[tuple[CheckpointInfo, Decision | None, str, bool]]:
    """(checkpoint, decision, status, milestone) oldest first.

    The milestone mark shows the recorded flag or the config's window, the two things retention
    reads, also where retention keeps the checkpoint for an earlier reason (``latest``).
    """
    by_step = {d.step: d for d in plan.decisions}
    is_milestone = selection.config.is_dynamic_milestone
    rows = []
    for info in catalog.checkpoints:
        decision = by_step.get(info.step)
        if info.complete:
            status = "complete"
        elif decision is not None and decision.reason is Reason.in_flight:
            status = "in-flight"
        else:
            status = "incomplete"
        milestone = info.dynamic_milestone or is_milestone(info.step)
        rows.append((info, decision, status, milestone))
    return rows


_MARKS = {
    (False, False): "",
    (True, False): "latest",
    (False, True): "milestone",
    (True, True): "latest,milestone",
}
"""The marks column, by (is the latest target, is a milestone)."""


def ls_table(
    catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection, *, now_s: float
) -> str:
    """The ``kf-ckpt ls`` table and its footer (count, total size, what gc would free)."""
    if not catalog.checkpoints:
        return f"no checkpoints under {catalog.root}"
    keep_last_n = plan.keep_last_n
    why = {reason: reason_text(reason, keep_last_n) for reason in Reason}
    rows = [
        (
            info.step,
            status,
            human_bytes(info.size_bytes),
            human_count(info.tokens_seen),
            human_age(now_s - info.mtime_s),
            _MARKS[info.is_latest, milestone],
            "-" if decision is None else decision.action,
            "" if decision is None else why[decision.reason],
        )
        for info, decision, status, milestone in _ls_rows(catalog, plan, selection)
    ]
    headers = ("step", "status", "size", "tokens", "age", "marks", "gc", "why")
    table = render_table(rows, headers, "rlrrllll")
    victims = plan.to_delete
    gc_text = (
        f"gc would delete {len(victims)} ({human_bytes(sum(d.size_bytes for d in victims))})"
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
        "skipped": skipped_document(catalog),
        "warnings": catalog_warnings(catalog),
        "count": len(catalog.checkpoints),
        "size_bytes": catalog.total_size_bytes,
        "gc_delete_count": len(plan.to_delete),
        "gc_bytes_freed": plan.bytes_freed,
    }
