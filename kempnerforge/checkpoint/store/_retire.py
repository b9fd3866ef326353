"""The training thread's half of a retention round: light scan, plan, rename into the trash.

:func:`retire_victims` is what
:class:`~kempnerforge.checkpoint.store.background.BackgroundRetention` runs on the training
thread after a save: it keeps the caller off the shard files (a fixed number of calls per
checkpoint, see :mod:`~kempnerforge.checkpoint.store._light_scan`) and leaves the victims' files
to the background emptier (:mod:`~kempnerforge.checkpoint.store._emptier`). Its public path is
:mod:`kempnerforge.checkpoint.store.background`. Torch-free.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from pathlib import Path

from kempnerforge.checkpoint.store._light_scan import probe_complete, scan_light
from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store.apply import apply_locked
from kempnerforge.checkpoint.store.catalog import check_root, scan
from kempnerforge.checkpoint.store.collect import GcResult, relied_upon, verify_deletions
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.checkpoint.store.retention import RetentionPlan, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = ["retire_victims"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def retire_victims(
    root: str | Path, config: CheckpointConfig, *, known_good: Collection[int] = ()
) -> GcResult:
    """A retention round that keeps the caller off the shard files: light scan, plan, rename.

    Under the lock (tried once, never waited for), as
    :func:`~kempnerforge.checkpoint.store.collect.collect_garbage` does, except that the scan is
    light, the checkpoints the plan relies on are re-checked by probes, and the victims are only
    renamed into the trash (durably) and reported as ``applied.in_trash``: removing their files
    is the caller's job, on another thread. The checkpoints the deletions rest on are checked
    (their manifests parsed through the allowlist), except those of ``known_good``: steps the
    caller knows pass (it wrote them, or checked them in an earlier round and they have not
    changed since).

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        LockBusyError: another process (``kf-ckpt gc``, a pin) holds the lock.
        RetentionError: the lock file or the trash cannot be used.
    """
    path = check_root(root)
    with hold_lock(path, wait_lock_s=0.0):
        catalog = _vouched(scan_light(path), known_good)
        plan = plan_retention(catalog, config)
        if catalog.cache_hits and plan.to_delete and not _probed_complete(plan):
            catalog = scan(path, use_cache=False)  # the cache was wrong: trust only a full walk
            plan = plan_retention(catalog, config)
        # A deletion must not rest on a corrupt checkpoint, and a corrupt one is never a victim:
        # their manifests are parsed through the allowlist (one open each, no walk: the shards
        # are checked by gc, ls and resume, which may walk).
        catalog, plan = verify_deletions(catalog, plan, config, shards=False)
        applied = apply_locked(plan, defer_removal=True)
    return GcResult(catalog=catalog, plan=plan, applied=applied)


def _vouched(catalog: Catalog, known_good: Collection[int]) -> Catalog:
    """``catalog`` with the complete checkpoints of ``known_good`` marked verified."""
    if not known_good:
        return catalog
    checkpoints = tuple(
        dataclasses.replace(c, verified=True) if c.complete and c.step in known_good else c
        for c in catalog.checkpoints
    )
    return dataclasses.replace(catalog, checkpoints=checkpoints)


def _probed_complete(plan: RetentionPlan) -> bool:
    """The checkpoints the plan deletes others on account of are complete on disk (probed)."""
    root_fd = os.open(plan.root, _DIR_FLAGS)
    try:
        return all(probe_complete(root_fd, d.name) for d in relied_upon(plan))
    finally:
        os.close(root_fd)
