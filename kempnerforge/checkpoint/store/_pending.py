"""The pending directories of a root: saves in flight and old copies set aside during a swap.

:func:`scan_pending` walks each ``.kf-inflight.step_<N>.<id>/`` and ``.kf-replaced.step_<N>.<id>/``
directory (size, files, newest mtime, completeness) and judges the writer lease of each save
(:mod:`.lease`): the I/O part of deciding whether a save is still being written. What to do with
each is retention's decision (:func:`kempnerforge.checkpoint.store.retention.plan_retention`).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    PendingKind,
    assess_complete,
    parse_pending,
    step_dir_name,
)
from kempnerforge.checkpoint.store.lease import Lease, LeaseVerdict, file_system_now, judge_writer

__all__ = ["PendingDir", "pending_refusal", "scan_pending", "victim_name"]


@dataclass(frozen=True, kw_only=True)
class PendingDir:
    """A save being written (``kind`` ``save``) or an old copy set aside (``replaced``)."""

    step: int
    path: Path
    kind: PendingKind
    complete: bool
    size_bytes: int
    file_count: int
    mtime_s: float
    """Newest modification time of the directory or anything in it (seconds since the epoch)."""
    writer: LeaseVerdict | None = None
    """The verdict on a save's writer lease (:mod:`.lease`); None for an old copy set aside."""

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def lease(self) -> Lease | None:
        """The save's writer lease, None when it has no readable one (or is an old copy)."""
        return None if self.writer is None else self.writer.lease

    @property
    def lease_live(self) -> bool | None:
        """The writer is alive (True), gone (False), or there is no readable lease (None:
        retention then judges by ``mtime_s``, as for a checkpoint written in place). An old copy
        set aside has no writer: False."""
        return False if self.writer is None else self.writer.live


def scan_pending(
    root: Path, root_fd: int, names: list[str], now_s: float, *, walk: bool = True
) -> list[PendingDir]:
    """Look at the pending directories ``names`` of the root open as ``root_fd``.

    With ``walk`` (a full scan) each is walked for its size, file count and newest mtime; without
    (the light scan of the training thread, which must not list the shards of a live save) only
    its own mtime and its ``.metadata`` marker are looked at, and its size is reported as 0.
    """
    found: list[PendingDir] = []
    for name in names:
        parsed = parse_pending(name)
        if parsed is None:
            continue
        seen = _walked(root_fd, name) if walk else _glanced(root_fd, name)
        if seen is None:
            continue  # published or discarded meanwhile
        complete, size_bytes, file_count, mtime_s = seen
        writer = judge_writer(root / name, now_s) if parsed.kind is PendingKind.save else None
        found.append(
            PendingDir(
                step=parsed.step,
                path=root / name,
                kind=parsed.kind,
                complete=complete,
                size_bytes=size_bytes,
                file_count=file_count,
                mtime_s=mtime_s,
                writer=writer,
            )
        )
    return sorted(found, key=lambda p: (p.step, p.name))


def _walked(root_fd: int, name: str) -> tuple[bool, int, int, float] | None:
    from kempnerforge.checkpoint.store._walk import walk_step_dir  # as catalog: only when needed

    walk = walk_step_dir(root_fd, name)
    if walk.vanished:
        return None
    status = assess_complete(
        has_dcp_metadata=walk.has_dcp_metadata,
        stages={k: bool(ok) for k, ok in walk.stages.items()},
    )
    return status.complete and walk.listed, walk.size_bytes, walk.file_count, walk.mtime_s


def _glanced(root_fd: int, name: str) -> tuple[bool, int, int, float] | None:
    try:
        mtime_s = os.lstat(name, dir_fd=root_fd).st_mtime
    except OSError:
        return None
    try:
        complete = stat.S_ISREG(os.lstat(f"{name}/{DCP_METADATA}", dir_fd=root_fd).st_mode)
    except OSError:
        complete = False
    return complete, 0, 0, mtime_s


def victim_name(path: Path, step: int) -> str:
    """The name retention may delete for a decision about ``step`` at ``path``: the pending
    directory's own name when ``path`` is one for that step, else ``step_<step>``."""
    pending = parse_pending(path.name)
    if pending is not None and pending.step == step:
        return path.name
    return step_dir_name(step)


def pending_refusal(root: Path, name: str) -> str | None:
    """Why the pending directory ``name`` must not be deleted now (re-checked under the lock).

    A save whose writer proves alive again is kept; an old copy set aside is deleted only while
    the ``step_<N>`` that replaced it exists.
    """
    pending = parse_pending(name)
    if pending is None:
        return f"{name} is not a pending directory"
    if pending.kind is PendingKind.replaced:
        if (root / step_dir_name(pending.step)).is_dir():
            return None
        return f"{step_dir_name(pending.step)} is missing: {name} is its only copy"
    now_s = file_system_now(root)
    verdict = judge_writer(root / name, time.time() if now_s is None else now_s)
    if not verdict.live or verdict.lease is None:
        return None
    return f"{name} is being written by pid {verdict.lease.pid} on {verdict.lease.host}"
