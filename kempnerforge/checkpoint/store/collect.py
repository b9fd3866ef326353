"""Garbage collection of a root: scan, plan and delete under one hold of the root's lock.

:func:`collect_garbage` is what ``kf-ckpt gc`` runs: it takes the lock of the root once, then
scans, plans and deletes under it, so no concurrent gc acts on a stale view. Before deleting, it
gives every checkpoint the deletions depend on the full completeness check
(:func:`verify_deletions`), so a corrupt checkpoint never stands in for good ones. The
deletions themselves are :mod:`.apply`'s. The training process's own round
(:func:`kempnerforge.checkpoint.store.background.retire_victims`) plans from a light scan and
leaves the removal of the files to a background thread. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store.apply import ApplyResult, apply_locked
from kempnerforge.checkpoint.store.catalog import check_root, scan
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.checkpoint.store.retention import Decision, Reason, RetentionPlan, plan_retention
from kempnerforge.checkpoint.store.swap import recover_swaps
from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = [
    "GcResult",
    "collect_garbage",
    "hold_lock",
    "relied_upon",
    "verify_deletions",
]


@dataclass(frozen=True, kw_only=True)
class GcResult:
    """One gc round: what was found, what was decided, and (unless a dry run) what was done."""

    catalog: Catalog
    plan: RetentionPlan
    applied: ApplyResult | None


def collect_garbage(
    root: str | Path,
    config: CheckpointConfig | None,
    *,
    wait_lock_s: float = 0.0,
    dry_run: bool = False,
    before_delete: Callable[[RetentionPlan], None] | None = None,
) -> GcResult:
    """Scan ``root``, plan retention with ``config`` and delete what the plan does not keep.

    The lock is taken once and the scan, the plan and the deletions all happen under it. With
    ``dry_run`` the plan is made without the lock and nothing is deleted. The scan may use the
    scan cache; before deleting, every checkpoint the deletions depend on gets the full check
    (see :func:`_verified_plan`), and a corrupt one is kept and no longer counts. Each victim is
    re-checked on disk before it goes, never from the cache (see :func:`apply_plan`).

    ``before_delete`` is called once with the plan that is about to be carried out, under the
    lock and before anything is deleted (on a dry run, with the plan made): a caller warns about
    exactly the deletions that follow, with no second scan; an exception it raises deletes
    nothing.

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        LockBusyError: another process holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file or the trash cannot be used.

    Example:
        >>> from kempnerforge.config.checkpoint import CheckpointConfig
        >>> config = CheckpointConfig(keep_last_n=2)
        >>> result = collect_garbage("runs/a/ckpt", config)  # doctest: +SKIP
        >>> [d.step for d in result.applied.deleted], result.applied.bytes_freed  # doctest: +SKIP
        ([100, 200], 3800000000)
    """
    path = check_root(root)
    if dry_run:
        catalog, plan = _verified_plan(path, config)
        if before_delete is not None:
            before_delete(plan)
        return GcResult(catalog=catalog, plan=plan, applied=None)
    with hold_lock(path, wait_lock_s=wait_lock_s):
        recover_swaps(path)  # a swap a kill interrupted: the old copy goes back first
        catalog, plan = _verified_plan(path, config)
        if before_delete is not None:
            before_delete(plan)
        applied = apply_locked(plan)
    return GcResult(catalog=catalog, plan=plan, applied=applied)


def _verified_plan(root: Path, config: CheckpointConfig | None) -> tuple[Catalog, RetentionPlan]:
    """Scan and plan, with every checkpoint that a deletion depends on fully checked first.

    A victim is deleted because newer complete checkpoints take its place: before that is
    trusted, each complete checkpoint newer than the oldest victim, and each complete victim
    (a corrupt one is never deleted automatically), gets the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint` -- once: a pass is kept in
    the scan cache, valid while the stamps of the checkpoint's directories are. One that fails
    stops counting as complete, so the plan is made again; this repeats until the plan's
    deletions rest on verified checkpoints only.
    """
    catalog = scan(root)
    return _until_verified(
        catalog,
        plan_retention(catalog, config),
        config,
        lambda _catalog, pending: scan(root, verify=pending),
    )


def verify_deletions(
    catalog: Catalog,
    plan: RetentionPlan,
    config: CheckpointConfig | None,
    *,
    shards: bool = True,
) -> tuple[Catalog, RetentionPlan]:
    """:func:`_verified_plan` for a catalog made otherwise (the manager's light scan).

    The checkpoints the deletions depend on that the catalog does not already know to be
    verified get checked on disk (nothing is written to the scan cache); the plan is made again
    until its deletions rest on checked checkpoints only. ``shards=False`` checks their
    manifests only (a bounded number of calls per checkpoint, see
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint`).
    """
    from kempnerforge.checkpoint.store.verify import verify_catalog

    return _until_verified(
        catalog,
        plan,
        config,
        lambda current, pending: verify_catalog(current, pending, shards=shards),
    )


def _until_verified(
    catalog: Catalog,
    plan: RetentionPlan,
    config: CheckpointConfig | None,
    recheck: Callable[[Catalog, set[int]], Catalog],
) -> tuple[Catalog, RetentionPlan]:
    """Re-plan until the deletions rest on verified checkpoints only.

    Each round hands ``recheck`` the complete, not yet verified checkpoints at or above the
    oldest victim (each at most once) and plans again from the catalog it returns.
    """
    checked: set[int] = set()
    while plan.to_delete:
        oldest = plan.to_delete[0].step
        pending = {
            c.step
            for c in catalog.checkpoints
            if c.complete and not c.verified and c.step >= oldest and c.step not in checked
        }
        if not pending:
            break
        catalog = recheck(catalog, pending)
        checked |= pending
        plan = plan_retention(catalog, config)
    return catalog, plan


def relied_upon(plan: RetentionPlan) -> list[Decision]:
    """The complete checkpoints whose presence lets ``plan`` delete others: the newest complete
    one and the ``keep_last_n`` window."""
    relied = [d for d in plan.to_keep if d.reason is Reason.within_keep_last_n]
    newest = next((d for d in reversed(plan.decisions) if d.complete), None)
    return relied + ([newest] if newest is not None else [])
