"""Retention policy: which checkpoints to keep and which to delete, and why (pure, torch-free).

:func:`plan_retention` turns a :class:`~kempnerforge.checkpoint.store.records.Catalog` and a
:class:`~kempnerforge.config.checkpoint.CheckpointConfig` into a frozen
:class:`~kempnerforge.checkpoint.store.decisions.RetentionPlan`. It touches no filesystem and
reads no clock (the time of the scan is recorded in the catalog), so the same inputs always give
the same plan; :func:`kempnerforge.checkpoint.store.apply.apply_plan` executes it. This is the
one implementation of the rules, used by the CheckpointManager after each save and by
``kf-ckpt ls`` / ``kf-ckpt gc``.

Kept, in this order of precedence (the first rule that applies is the reason shown):

1. ``latest``: the target of the ``latest`` link, when the link is honoured;
2. ``milestone``: ``config.is_dynamic_milestone(step)``, or ``"dynamic_milestone": true``
   recorded in its metadata.json (so milestones survive a gc run without the run's config);
   milestones never use up ``keep_last_n`` slots;
3. ``pinned``: the checkpoint has a pin file (:mod:`kempnerforge.checkpoint.store.pins`); its
   note is in the decision; pins never use up ``keep_last_n`` slots either;
4. ``corrupt``: its ``.metadata`` is there but the checkpoint is unusable (see
   :mod:`kempnerforge.checkpoint.store.verify`): never deleted automatically, it may be the
   evidence of what went wrong; a person removes it by hand;
5. ``in_flight``: incomplete, and either newer than the newest complete checkpoint or written
   to within :data:`IN_FLIGHT_GRACE_S` of the scan (a save may still be writing it: after a
   rollback, a run resumed from an older checkpoint saves steps below the newest complete one);
6. ``unreadable``: completeness could not be judged (an unreadable directory); kept until it can;
7. ``within_keep_last_n``: one of the newest ``keep_last_n`` complete checkpoints that are
   neither milestones nor pinned;
8. ``newest_complete``: the newest complete checkpoint is always kept;
9. ``keep_all``: ``keep_last_n <= 0`` turns deletion off.

Without a retention policy (``config=None``: a root whose checkpoints record no config, used
without a job file or ``keep_last_n``), every checkpoint is kept with the reason ``no_policy``:
no known policy, no deletion.

Deleted: ``abandoned_incomplete`` (incomplete, older than the newest complete one and not
written to for :data:`IN_FLIGHT_GRACE_S`) and ``beyond_keep_last_n`` (a complete non-milestone
checkpoint older than the newest ``keep_last_n``).

The records a plan is made of (:class:`~kempnerforge.checkpoint.store.decisions.Decision`, with
the facts its rule compared, and :class:`~kempnerforge.checkpoint.store.decisions.RetentionPlan`)
live in :mod:`kempnerforge.checkpoint.store.decisions`, and are importable from here too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.catalog import PendingDir
from kempnerforge.checkpoint.store.decisions import (
    Action,
    Decision,
    MilestoneSource,
    Reason,
    RetentionPlan,
)
from kempnerforge.checkpoint.store.layout import PendingKind
from kempnerforge.checkpoint.store.lineage import AgeClock, off_lineage
from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo
from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = [
    "IN_FLIGHT_GRACE_S",
    "Action",
    "Decision",
    "MilestoneSource",
    "Reason",
    "RetentionPlan",
    "plan_retention",
]

IN_FLIGHT_GRACE_S = 3600.0
"""An incomplete checkpoint written to this recently (its newest mtime, measured against the
time of the scan) is kept as in flight even when it is older than the newest complete one.

Why an hour: DCP writes a save continuously (every shard write moves an mtime), so a save that
is alive touches its directory every few seconds or minutes; an hour without a single write
means its writer is gone (killed, preempted) and the directory is abandoned. The window also
absorbs clock skew between the scanning host and the file server. Override it with
``plan_retention(..., in_flight_grace_s=...)``."""

_RECORDED = MilestoneSource(recorded=True)


def plan_retention(
    catalog: Catalog,
    config: CheckpointConfig | None,
    *,
    in_flight_grace_s: float = IN_FLIGHT_GRACE_S,
) -> RetentionPlan:
    """Decide, for every checkpoint in ``catalog``, whether to keep or delete it.

    Pure: no filesystem, no clock; deterministic for the same catalog and config. How recently
    an incomplete checkpoint was written is measured against ``catalog.scanned_at_s`` (the
    grace rule does not apply to a catalog without one).

    Args:
        catalog: what :func:`~kempnerforge.checkpoint.store.catalog.scan` found.
        config: ``keep_last_n`` and the dynamic milestone window; None when no retention policy
            is known (then every checkpoint is kept, with the reason ``no_policy``).
        in_flight_grace_s: keep an incomplete checkpoint whose newest mtime lies at most this
            many seconds before the scan (see :data:`IN_FLIGHT_GRACE_S`).

    Example:
        >>> from kempnerforge.checkpoint.store.catalog import scan
        >>> from kempnerforge.config.checkpoint import CheckpointConfig
        >>> config = CheckpointConfig(keep_last_n=2)
        >>> plan = plan_retention(scan("runs/a/ckpt"), config)  # doctest: +SKIP
        >>> [(d.step, d.reason.value, d.rank) for d in plan.decisions]  # doctest: +SKIP
        [(100, 'beyond_keep_last_n', None), (200, 'within_keep_last_n', 2), (300, 'latest', 1)]
    """
    checkpoints = sorted(catalog.checkpoints, key=lambda c: c.step)
    owner = catalog.owner
    clock = AgeClock(now_s=catalog.clock_s or catalog.scanned_at_s, skew_free=bool(catalog.clock_s))
    present = {c.step for c in checkpoints}
    keep_last_n = None if config is None else config.keep_last_n
    pending = tuple(
        _decide_pending(p, present, clock, in_flight_grace_s, keep_last_n) for p in catalog.pending
    )
    if config is None:
        return _keep_everything(catalog.root, checkpoints, pending, clock)
    keep_last_n = config.keep_last_n
    off = {c.step for c in checkpoints if off_lineage(c.step, c.run_id, owner)}
    complete = [c.step for c in checkpoints if c.complete]
    newest = max((s for s in complete if s not in off), default=max(complete, default=None))
    milestones = _milestones(checkpoints, config)
    # The newest keep_last_n, counting the current lineage first: after a rollback, the branch
    # it left is kept only in the slots the run's own lineage does not fill.
    candidates = sorted(
        (c.step for c in checkpoints if c.complete and c.step not in milestones and c.pin is None),
        key=lambda step: (step not in off, step),
        reverse=True,
    )
    rank = {step: i for i, step in enumerate(candidates[: max(keep_last_n, 0)], start=1)}
    decisions = []
    for c in checkpoints:
        idle_s, place, milestone = clock.idle_s(c), rank.get(c.step), milestones.get(c.step)
        recent = clock.recent(idle_s, in_flight_grace_s)
        action, reason = _decide(c, milestone, newest, place, keep_last_n, recent)
        decisions.append(
            _decision(c, action, reason, keep_last_n, place, newest, idle_s, milestone)
        )
    return RetentionPlan(
        root=catalog.root, keep_last_n=keep_last_n, decisions=tuple(decisions), pending=pending
    )


def _milestones(
    checkpoints: list[CheckpointInfo], config: CheckpointConfig
) -> dict[int, MilestoneSource]:
    """step -> why it is a dynamic milestone, for the milestones among ``checkpoints``."""
    window = config.dyn_ckpt_window
    by_window = None
    if window is not None:
        by_window = MilestoneSource(
            recorded=False, start=window.start, stop=window.stop, strategy=window.strategy
        )
    found = {}
    for c in checkpoints:
        if by_window is not None and config.is_dynamic_milestone(c.step):
            found[c.step] = by_window
        elif c.dynamic_milestone:
            found[c.step] = _RECORDED
    return found


def _decide(
    c: CheckpointInfo,
    milestone: MilestoneSource | None,
    newest: int | None,
    rank: int | None,
    keep_last_n: int,
    recent: bool,
) -> tuple[Action, Reason]:
    keep, delete = Action.keep, Action.delete
    if c.is_latest:
        return keep, Reason.latest
    if milestone is not None:
        return keep, Reason.milestone
    if c.pin is not None:
        return keep, Reason.pinned
    if c.corrupt:
        return keep, Reason.corrupt
    if not c.complete and (newest is None or c.step > newest):
        return keep, Reason.in_flight  # a save may be writing it
    if recent:
        return keep, Reason.in_flight  # written to within the grace: a save may still write it
    if c.scan_error is not None:
        return keep, Reason.unreadable
    if rank is not None:
        return keep, Reason.within_keep_last_n
    if c.step == newest:
        return keep, Reason.newest_complete
    if keep_last_n <= 0:
        return keep, Reason.keep_all
    if not c.complete:
        return delete, Reason.abandoned_incomplete
    return delete, Reason.beyond_keep_last_n


def _decide_pending(
    p: PendingDir,
    present: set[int],
    clock: AgeClock,
    grace_s: float,
    keep_last_n: int | None,
) -> Decision:
    idle_s = clock.age_s(p.mtime_s)
    superseded = p.kind is PendingKind.replaced and p.step in present
    live = p.lease_live
    if p.kind is PendingKind.replaced:
        keep = not superseded  # the next gc or run puts it back as step_<N>
    elif live is not None:
        keep = live
    else:  # no readable lease: judged by its mtime, as a save written in place
        keep = idle_s is None or clock.recent(idle_s, grace_s)
    return Decision(
        step=p.step,
        path=p.path,
        action=Action.keep if keep else Action.delete,
        reason=Reason.in_flight if keep else Reason.abandoned_incomplete,
        size_bytes=p.size_bytes,
        complete=p.complete,
        keep_last_n=keep_last_n,
        idle_s=idle_s,
        pending_kind=p.kind,
        writer=p.writer,
        superseded=superseded,
    )


def _keep_everything(
    root: Path,
    checkpoints: list[CheckpointInfo],
    pending: tuple[Decision, ...],
    clock: AgeClock,
) -> RetentionPlan:
    """The plan without a retention policy: restic's rule, no known policy means no deletion
    (an abandoned save not yet published is kept too: it is shown, not removed)."""
    keep, no_policy = Action.keep, Reason.no_policy
    decisions = tuple(
        _decision(c, keep, no_policy, None, None, None, clock.idle_s(c), None) for c in checkpoints
    )
    kept = tuple(
        d if d.action is keep else dataclasses.replace(d, action=keep, reason=no_policy)
        for d in pending
    )
    return RetentionPlan(
        root=root, keep_last_n=0, decisions=decisions, has_policy=False, pending=kept
    )


def _decision(
    c: CheckpointInfo,
    action: Action,
    reason: Reason,
    keep_last_n: int | None,
    rank: int | None,
    newest: int | None,
    idle_s: float | None,
    milestone: MilestoneSource | None,
) -> Decision:
    """The decision about checkpoint ``c``, built without the frozen ``__init__``.

    The ``__init__`` of a frozen dataclass sets each field through ``object.__setattr__``, most
    of what planning 2,000 checkpoints costs. Decision has no ``__post_init__``, so filling the
    instance dict directly makes the same record (``tests/checkpoint/store/test_retention.py``
    checks that it equals the constructor's).
    """
    # Measured: planning bench store's 2,000 checkpoints takes 32 ms with it, 75 ms without.
    decision = object.__new__(Decision)
    fields: dict[str, Any] = decision.__dict__
    fields.update(
        step=c.step,
        path=c.path,
        action=action,
        reason=reason,
        size_bytes=c.size_bytes,
        complete=c.complete,
        corrupt=c.corrupt,
        incomplete_reason=c.incomplete_reason,
        scan_error=c.scan_error,
        keep_last_n=keep_last_n,
        rank=rank,
        newest_step=newest,
        idle_s=idle_s,
        milestone=milestone,
        pin_note=None if c.pin is None else c.pin.note,
        pending_kind=None,
        writer=None,
        superseded=False,
    )
    return decision
