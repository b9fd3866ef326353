"""The part of the ``kf-ckpt ls`` view about saves not yet published, and the root's lineage.

In-flight saves (``.kf-inflight.step_<N>.<id>``) and old copies set aside by a re-save
(``.kf-replaced.step_<N>.<id>``) are listed under their step, after the checkpoints: status
``in-flight`` (its writer lives), ``abandoned`` (its writer is gone; gc deletes it) or
``set-aside``. ``--json`` also carries the lineage: who owns the root and where its run resumed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kempnerforge.checkpoint.store.catalog import PendingDir
from kempnerforge.checkpoint.store.layout import PendingKind
from kempnerforge.checkpoint.store.lineage import off_lineage
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.checkpoint.store.retention import Decision, Reason, RetentionPlan
from kempnerforge.cli.render import human_age, human_bytes, plural
from kempnerforge.cli.render._decisions import decision_detail

__all__ = ["lineage_document", "pending_document", "pending_footer", "pending_rows"]


def pending_status(pending: PendingDir, decision: Decision) -> str:
    """``in-flight`` (a live save), ``abandoned`` (its writer is gone) or ``set-aside``."""
    if pending.kind is PendingKind.replaced:
        return "set-aside"
    if pending.lease_live is not None:  # the writer's lease says it, whatever the policy
        return "in-flight" if pending.lease_live else "abandoned"
    return "in-flight" if decision.reason is Reason.in_flight else "abandoned"


def pending_rows(
    catalog: Catalog, plan: RetentionPlan, *, now_s: float, metrics: int, notes: bool
) -> list[tuple[Any, ...]]:
    """Table rows in the ``ls`` columns (``metrics`` metric columns, a note column or not)."""
    return [
        (
            p.step,
            pending_status(p, d),
            human_bytes(p.size_bytes),
            "-",
            human_age(now_s - p.mtime_s),
            *(["-"] * metrics),
            "",
            d.action,
            decision_detail(d),
            *([""] if notes else []),
        )
        for p, d in zip(catalog.pending, plan.pending, strict=True)
    ]


def pending_footer(catalog: Catalog) -> str:
    """`` (and 2 saves not yet published)``, or nothing."""
    if not catalog.pending:
        return ""
    return f" (and {plural(len(catalog.pending), 'save')} not yet published)"


def pending_document(catalog: Catalog, plan: RetentionPlan) -> list[dict[str, Any]]:
    """The ``in_flight`` array of ``kf-ckpt ls --json``."""
    return [
        {
            "step": p.step,
            "path": str(p.path),
            "kind": str(p.kind),
            "status": pending_status(p, d),
            "complete": p.complete,
            "writer_alive": p.lease_live,
            "lease": None if p.lease is None else asdict(p.lease),
            "size_bytes": p.size_bytes,
            "mtime_s": p.mtime_s,
            "gc_action": str(d.action),
            "gc_reason": str(d.reason),
            "gc_detail": decision_detail(d),
        }
        for p, d in zip(catalog.pending, plan.pending, strict=True)
    ]


def lineage_document(catalog: Catalog) -> dict[str, Any]:
    """Who owns the root, where its run resumed from, and which checkpoints left its lineage."""
    owner = catalog.owner
    off = [c.step for c in catalog.checkpoints if off_lineage(c.step, c.run_id, owner)]
    return {
        "owner": None if owner is None else asdict(owner),
        "resumed_from": None if owner is None else owner.resumed_from,
        "rolled_back_from": None if owner is None else owner.rolled_back_from,
        "off_lineage": off,
    }
