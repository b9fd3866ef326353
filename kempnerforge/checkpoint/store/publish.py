"""Publishing a save: in-flight directory, fencing, the crash-safe swap into ``step_N``, ``latest``.

A save is never written in place. Rank 0 creates its own in-flight directory,
``.kf-inflight.step_<N>.<save id>/`` (:func:`begin_save`, with a writer lease), every rank writes
into it, and only once it is complete does :func:`publish_save` rename it to ``step_<N>``, under
the publish lock and only if the job still owns the root (:mod:`.owner`). An existing complete
``step_<N>`` (a re-save after a rollback or a requeue) stays untouched until then; the swap is

1. rename ``step_<N>`` to ``.kf-replaced.step_<N>.<save id>`` (the old copy, set aside);
2. rename the in-flight directory to ``step_<N>``;
3. move the old copy into the trash, which the next retention round empties.

A kill between 1 and 2 leaves no ``step_<N>``: :func:`.swap.recover_swaps`, which the next run and
every ``kf-ckpt gc`` run under the lock first, renames the old copy back. Either the old or the
new complete checkpoint is therefore always reachable. ``latest`` then moves forward only,
unless the owning run rolled back (:func:`.owner.claim_root` records it).

Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store.files import (
    fsync_dir,
    read_latest,
    unique_suffix,
    update_latest,
)
from kempnerforge.checkpoint.store.layout import (
    LEASE_NAME,
    PUBLISH_LOCK_NAME,
    check_complete,
    inflight_dir_name,
    parse_pending,
    parse_step,
    pp_stage_dirs,
    replaced_dir_name,
    step_dir_name,
)
from kempnerforge.checkpoint.store.lease import new_lease, write_lease
from kempnerforge.checkpoint.store.owner import read_owner
from kempnerforge.checkpoint.store.swap import trash_entry
from kempnerforge.errors import (
    CheckpointSaveError,
    LockBusyError,
    RetentionError,
    SupersededError,
)

__all__ = [
    "PUBLISH_LOCK_WAIT_S",
    "Published",
    "begin_save",
    "publish_save",
]

logger = logging.getLogger(__name__)

PUBLISH_LOCK_WAIT_S = 300.0
"""How long publishing (or taking ownership) waits for a ``kf-ckpt gc`` holding the lock."""


@dataclass(frozen=True, kw_only=True)
class Published:
    """What :func:`publish_save` did."""

    path: Path
    latest_moved: bool
    replaced: bool
    """An older complete ``step_<N>`` was swapped out (into the trash)."""


def begin_save(root: Path, step: int, *, owner_token: str) -> Path:
    """Create the in-flight directory of a save of ``step`` with this process's lease.

    Raises:
        CheckpointSaveError: the directory cannot be created (a read-only root, a full disk).
    """
    path = root / inflight_dir_name(step, unique_suffix())
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        write_lease(path, new_lease(step, owner_token))
    except OSError as exc:
        raise CheckpointSaveError(
            f"cannot create the in-flight directory {path} of step {step}: {exc}; "
            f"'latest' not moved"
        ) from exc
    return path


def publish_save(
    root: Path,
    save_dir: Path,
    step: int,
    *,
    owner_token: str,
    pp_stages: int | None = None,
    may_move_back: bool = False,
    wait_lock_s: float = PUBLISH_LOCK_WAIT_S,
) -> Published:
    """Rename the complete in-flight ``save_dir`` to ``step_<step>`` and move ``latest``.

    ``latest`` moves when it names no step, an older step or this step; or, with
    ``may_move_back`` (the owning run rolled back), any step.

    Raises:
        SupersededError: another job took over the root; nothing was published.
        CheckpointSaveError: the save is incomplete, the lock stays busy, or a rename failed;
            the previous ``step_<step>`` (if any) and ``latest`` are as they were.
    """
    try:
        with hold_lock(root, wait_lock_s=wait_lock_s, name=PUBLISH_LOCK_NAME):
            return _publish_locked(
                root, save_dir, step, owner_token, pp_stages, may_move_back, wait_lock_s
            )
    except (LockBusyError, RetentionError) as exc:
        raise CheckpointSaveError(
            f"cannot publish step {step}: {exc}; it stays in {save_dir.name}, 'latest' not moved"
        ) from exc


def _publish_locked(
    root: Path,
    save_dir: Path,
    step: int,
    owner_token: str,
    pp_stages: int | None,
    may_move_back: bool,
    wait_lock_s: float,
) -> Published:
    owner = read_owner(root)
    if owner is None or owner.token != owner_token:
        by = "no job" if owner is None else f"the job of pid {owner.pid} on {owner.host}"
        since = "" if owner is None else f" since {owner.since}"
        raise SupersededError(
            f"another job took over {root} ({by} owns it{since}); step {step} was not published "
            f"and 'latest' not moved; stop this job, the other one now writes this root"
        )
    for _, stage_dir in pp_stage_dirs(save_dir):
        fsync_dir(stage_dir)
    fsync_dir(save_dir)
    status = check_complete(save_dir, pp_stages=pp_stages)
    if not status.complete:
        raise CheckpointSaveError(
            f"the save of step {step} in {save_dir} is incomplete ({status.reason}); "
            f"'latest' not moved"
        )
    with contextlib.suppress(FileNotFoundError):
        (save_dir / LEASE_NAME).unlink()
    target = root / step_dir_name(step)
    if target.exists() or target.is_symlink():
        # Replacing a checkpoint: also under the root's lock, so that no gc deletes the new copy
        # on the strength of a plan it made about the old one, and no recovery runs mid-swap.
        with hold_lock(root, wait_lock_s=wait_lock_s):
            replaced = _swap_in(root, save_dir, target)
    else:
        replaced = _swap_in(root, save_dir, target)
    latest = read_latest(root).step
    moved = latest is None or step >= latest or may_move_back
    if moved:
        update_latest(root, step)
    else:
        logger.warning(
            "%s: published step %d but latest stays at step %d: latest only moves forward "
            "unless this run resumed from an older checkpoint",
            root,
            step,
            latest,
        )
    logger.info("saved checkpoint %s", target)
    return Published(path=target, latest_moved=moved, replaced=replaced is not None)


def _swap_in(root: Path, save_dir: Path, target: Path) -> Path | None:
    """Rename ``save_dir`` to ``target``; an existing ``target`` is set aside first, then trashed.

    Returns where the old copy was set aside (None when there was none).
    """
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise CheckpointSaveError(
            f"{target} exists and is not a checkpoint directory; move it out of {root}"
        )
    aside: Path | None = None
    try:
        if target.exists():
            pending = parse_pending(save_dir.name)
            save_id = pending.save_id if pending else unique_suffix()
            aside = root / replaced_dir_name(parse_step(target.name) or 0, save_id)
            os.rename(target, aside)
            fsync_dir(root)
        os.rename(save_dir, target)
        fsync_dir(root)
    except OSError as exc:
        if aside is not None and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(aside, target)  # put the old copy back
        raise CheckpointSaveError(
            f"cannot rename {save_dir.name} to {target.name}: {exc}; 'latest' not moved"
        ) from exc
    if aside is not None:
        trash_entry(root, aside.name)
    return aside
