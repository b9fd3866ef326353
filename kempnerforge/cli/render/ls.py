"""The ``kf-ckpt ls`` view of a catalog and its retention plan: the table and the JSON document.

Which rows, in which order, with which metric columns, is an :class:`LsView` (``--filter``,
``--sort``, ``--metric``); the saves not yet published and the lineage come from
:mod:`kempnerforge.cli.render._pending`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo
from kempnerforge.checkpoint.store.retention import Decision, Reason, RetentionPlan
from kempnerforge.checkpoint.store.selection import ConfigSelection
from kempnerforge.cli.render import (
    FORMAT_VERSION,
    catalog_warnings,
    config_document,
    human_age,
    human_bytes,
    human_count,
    plural,
    reason_text,
    render_table,
    skipped_document,
)
from kempnerforge.cli.render._decisions import decision_detail
from kempnerforge.cli.render._pending import (
    lineage_document,
    pending_document,
    pending_footer,
    pending_rows,
)

__all__ = ["FILTERS", "LsView", "ls_document", "ls_table", "ls_warnings"]


FILTERS = ("pinned", "milestone", "deletable", "incomplete")
"""The kinds ``--filter`` selects (repeatable; a checkpoint of any of them is shown)."""

_Row = tuple[CheckpointInfo, Decision | None, str, bool]
"""(checkpoint, gc decision, status, milestone) of one line of the listing."""


class LsView:
    """The rows, their order and the metric columns (``--filter``, ``--sort``, ``--metric``)."""

    def __init__(
        self, *, metrics: tuple[str, ...] = (), sort: str = "step", filters: tuple[str, ...] = ()
    ) -> None:
        self.metrics = tuple(dict.fromkeys(metrics))  # a repeated name is one column
        self.sort = sort
        self.filters = tuple(dict.fromkeys(filters))

    def rows(self, rows: list[_Row]) -> list[_Row]:
        """``rows`` (oldest first) filtered, then sorted; ties stay oldest first."""
        if self.filters:
            rows = [row for row in rows if any(_KINDS[kind](row) for kind in self.filters)]
        name = self.sort.removeprefix("-")
        if name == "step" and not self.sort.startswith("-"):
            return rows
        key = _SORT_KEYS.get(name) or _metric_key(name.removeprefix("metric:"))
        present = [row for row in rows if key(row) is not None]
        missing = [row for row in rows if key(row) is None]
        present.sort(key=key, reverse=self.sort.startswith("-"))  # type: ignore[arg-type]
        return present + missing


_KINDS: dict[str, Callable[[_Row], bool]] = {
    "pinned": lambda row: row[0].pin is not None,
    "milestone": lambda row: row[3],
    "deletable": lambda row: row[1] is not None and row[1].action == "delete",
    "incomplete": lambda row: not row[0].complete,
}
_SORT_KEYS: dict[str, Callable[[_Row], float | None]] = {
    "step": lambda row: row[0].step,
    "size": lambda row: row[0].size_bytes,
    "age": lambda row: -row[0].mtime_s,  # the youngest (newest write) first
}


def _metric_key(name: str) -> Callable[[_Row], float | None]:
    return lambda row: row[0].metrics.get(name)


def ls_warnings(catalog: Catalog, selection: ConfigSelection) -> list[str]:
    """What ``ls`` says on stderr: the config's warnings, then the scan's."""
    return [*selection.warnings, *catalog_warnings(catalog)]


def _ls_rows(catalog: Catalog, plan: RetentionPlan, selection: ConfigSelection) -> list[_Row]:
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
        elif info.corrupt:
            status = "corrupt"
        elif decision is not None and decision.reason is Reason.in_flight:
            status = "in-flight"
        else:
            status = "incomplete"
        milestone = info.dynamic_milestone or is_milestone(info.step)
        rows.append((info, decision, status, milestone))
    return rows


_MARKS = {
    (latest, milestone, pinned): ",".join(
        mark
        for mark, on in (("latest", latest), ("milestone", milestone), ("pinned", pinned))
        if on
    )
    for latest in (False, True)
    for milestone in (False, True)
    for pinned in (False, True)
}
"""The marks column, by (is the latest target, is a milestone, is pinned)."""


def _metric_text(value: float | int | None) -> str:
    """``2.31``, ``0.0003``, ``1.234e+06``; ``-`` when missing or recorded as not finite."""
    return "-" if value is None else format(value, ".6g")


def ls_table(
    catalog: Catalog,
    plan: RetentionPlan,
    selection: ConfigSelection,
    *,
    now_s: float,
    view: LsView | None = None,
) -> str:
    """The ``kf-ckpt ls`` table and its footer (count, total size, what gc would free).

    Metric columns (``view.metrics``) come after the age; a ``note`` column with each pin's
    note is added when some checkpoint is pinned.
    """
    if not catalog.checkpoints:
        return f"no checkpoints under {catalog.root}"
    view = view or LsView()
    keep_last_n = plan.keep_last_n
    why = {reason: reason_text(reason, keep_last_n) for reason in Reason}
    shown = view.rows(_ls_rows(catalog, plan, selection))
    notes = any(info.pin is not None for info in catalog.checkpoints)
    rows = [
        (
            info.step,
            status,
            human_bytes(info.size_bytes),
            human_count(info.tokens_seen),
            human_age(now_s - info.mtime_s),
            *(_metric_text(info.metrics.get(name)) for name in view.metrics),
            _MARKS[info.is_latest, milestone, info.pin is not None],
            "-" if decision is None else decision.action,
            "" if decision is None else why[decision.reason],
            *([info.pin.note or "" if info.pin is not None else ""] if notes else []),
        )
        for info, decision, status, milestone in shown
    ]
    headers = (
        "step",
        "status",
        "size",
        "tokens",
        "age",
        *view.metrics,
        "marks",
        "gc",
        "why",
        *(["note"] if notes else []),
    )
    if not view.filters:  # saves not yet published, under their step
        rows += pending_rows(catalog, plan, now_s=now_s, metrics=len(view.metrics), notes=notes)
    align = "rlrrl" + "r" * len(view.metrics) + "lll" + ("l" if notes else "")
    table = render_table(rows, headers, align)
    victims = plan.to_delete
    gc_text = (
        f"gc would delete {len(victims)} ({human_bytes(sum(d.size_bytes for d in victims))})"
        if victims
        else "gc would delete nothing"
    )
    if not plan.has_policy:
        gc_text += " (no retention policy)"
    count = plural(len(catalog.checkpoints), "checkpoint") + pending_footer(catalog)
    footer = f"{count}, {human_bytes(catalog.total_size_bytes)}; {gc_text}"
    if view.filters:
        footer += f"; showing {len(shown)} ({' or '.join(view.filters)})"
    return f"{table}\n\n{footer}"


def ls_document(
    catalog: Catalog,
    plan: RetentionPlan,
    selection: ConfigSelection,
    *,
    view: LsView | None = None,
) -> dict[str, Any]:
    """The ``kf-ckpt ls --json`` document (schema in docs/reference/json.rst)."""
    view = view or LsView()
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
            "gc_detail": None if decision is None else decision_detail(decision),
            "warnings": list(info.warnings),
            "pinned": info.pin is not None,
            "pin": None if info.pin is None else info.pin.to_dict(),
            "metrics": info.metrics,
            "run_id": info.run_id,
        }
        for info, decision, status, milestone in view.rows(_ls_rows(catalog, plan, selection))
    ]
    return {
        "format": "kf-ckpt-ls",
        "format_version": FORMAT_VERSION,
        "root": str(catalog.root),
        "config": config_document(selection),
        "latest": catalog.latest.step,
        "checkpoints": checkpoints,
        "in_flight": pending_document(catalog, plan),
        "lineage": lineage_document(catalog),
        "skipped": skipped_document(catalog),
        "warnings": catalog_warnings(catalog),
        "count": len(catalog.checkpoints),
        "size_bytes": catalog.total_size_bytes,
        "gc_delete_count": len(plan.to_delete),
        "gc_bytes_freed": plan.bytes_freed,
        "sort": view.sort,
        "filter": list(view.filters),
    }
