"""Executing a retention plan under the root's lock: re-check, move into the trash, remove.

Deleting one victim:

1. re-check it under the lock: it still exists, is still a real directory (not a symlink)
   directly inside the root, and is still neither the ``latest`` target nor pinned; otherwise
   it is skipped;
2. rename it into ``<root>/.kf-trash/`` (atomic); the root directory is fsync'ed once all
   victims are moved, so the removal is durable before any file is unlinked;
3. remove it from the trash with ``unlinkat``/``rmdir`` relative to directories opened with
   ``O_NOFOLLOW``: a symlink is unlinked, never followed.

On a full disk (the trash cannot be created, or a rename into it fails with ENOSPC) a victim is
deleted in place instead, its completeness markers first, so that a half-deleted directory can
never look complete. A run killed at any point leaves every ``step_<N>`` in the root either
untouched or gone, and the next run first finishes whatever is left in the trash. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store._lock import ReaderGuard, hold_lock
from kempnerforge.checkpoint.store._pending import victim_name
from kempnerforge.checkpoint.store._recheck import VANISHED, recheck
from kempnerforge.checkpoint.store._trash import (
    clear_trash,
    describe_error,
    move_to_trash,
    no_space,
    open_trash,
    remove_in_place,
    remove_tree,
)
from kempnerforge.checkpoint.store.catalog import check_root
from kempnerforge.checkpoint.store.files import unique_suffix
from kempnerforge.checkpoint.store.layout import TRASH_NAME, step_dir_name
from kempnerforge.checkpoint.store.retention import Decision, RetentionPlan
from kempnerforge.errors import RetentionError

__all__ = ["ApplyResult", "NotDeleted", "apply_locked", "apply_plan"]


@dataclass(frozen=True, kw_only=True)
class NotDeleted:
    """A victim that was not deleted, and why: it failed, or the re-check under the lock
    refused it (not an error); :class:`ApplyResult` keeps the two apart."""

    step: int
    path: Path
    reason: str


@dataclass(frozen=True, kw_only=True)
class ApplyResult:
    """What applying a plan did."""

    deleted: tuple[Decision, ...] = ()
    vanished: tuple[Decision, ...] = ()
    """Victims already gone when their turn came (counted as done, no bytes freed)."""
    failed: tuple[NotDeleted, ...] = ()
    skipped: tuple[NotDeleted, ...] = ()
    bytes_freed: int = 0
    trash_cleared: int = 0
    """Entries left in the trash by an interrupted run that this run removed."""
    in_trash: tuple[Decision, ...] = ()
    """Victims renamed into the trash whose files are left for a background emptier
    (:mod:`kempnerforge.checkpoint.store.background`): gone from the root, bytes not freed yet."""
    in_place: bool = False
    """The disk was too full to create the trash: victims were deleted where they were."""
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no deletion failed (skips and vanished victims are fine)."""
        return not self.failed


def apply_plan(plan: RetentionPlan, *, wait_lock_s: float = 0.0) -> ApplyResult:
    """Delete the victims of ``plan`` under the root's lock, re-checking each one first.

    A victim that changed since the plan was made (gone, now ``latest``, now a symlink or a
    file) is reported as vanished or skipped, never deleted blindly.

    Example:
        >>> from kempnerforge.checkpoint.store.catalog import scan
        >>> from kempnerforge.checkpoint.store.retention import plan_retention
        >>> plan = plan_retention(scan("runs/a/ckpt"), config)  # doctest: +SKIP
        >>> [(d.step, d.action.value) for d in plan.decisions]  # look first  # doctest: +SKIP
        >>> result = apply_plan(plan, wait_lock_s=60)  # doctest: +SKIP
        >>> result.ok, [d.step for d in result.deleted]  # doctest: +SKIP
        (True, [100, 200])

    Raises:
        CheckpointRootError: the plan's root is missing or not a directory.
        LockBusyError: another process holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file or the trash cannot be used.
    """
    root = check_root(plan.root)
    with hold_lock(root, wait_lock_s=wait_lock_s):
        return apply_locked(plan)


@dataclass(kw_only=True)
class _Progress:
    deleted: list[Decision]
    vanished: list[Decision]
    failed: list[NotDeleted]
    skipped: list[NotDeleted]
    in_place: bool = False

    def result(self, root: Path, warnings: list[str], **extra: Any) -> ApplyResult:
        """The :class:`ApplyResult` of what was done, with the in-place warning when it applies."""
        return ApplyResult(
            deleted=tuple(self.deleted),
            vanished=tuple(self.vanished),
            failed=tuple(self.failed),
            skipped=tuple(self.skipped),
            bytes_freed=sum(d.size_bytes for d in self.deleted),
            in_place=self.in_place,
            warnings=tuple(warnings + _in_place_warning(root, self.in_place)),
            **extra,
        )


def apply_locked(plan: RetentionPlan, *, defer_removal: bool = False) -> ApplyResult:
    """:func:`apply_plan` for a caller that already holds the root's lock.

    With ``defer_removal``, stop once the victims are renamed into the trash (durably) and
    report them as :attr:`ApplyResult.in_trash`; leftovers of earlier runs stay there too.
    """
    root = plan.root
    victims = plan.to_delete
    progress = _Progress(deleted=[], vanished=[], failed=[], skipped=[])
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RetentionError(f"cannot open checkpoint root {root}: {exc.strerror}") from exc
    try:
        try:
            trash_fd = open_trash(root_fd, create=bool(victims))
        except RetentionError as exc:
            if not no_space(exc):
                raise
            return _apply_in_place(root_fd, root, victims, progress)
        if trash_fd is None:
            return ApplyResult()
        try:
            cleared, warnings = (0, []) if defer_removal else clear_trash(trash_fd)
            moved = _move_to_trash(root_fd, trash_fd, root, victims, progress)
            if moved:
                warnings += _sync(root_fd, trash_fd)  # renames durable before any file goes
            in_trash = tuple(decision for decision, _ in moved) if defer_removal else ()
            for decision, trash_name in [] if defer_removal else moved:
                try:
                    remove_tree(trash_fd, trash_name, is_dir=True)  # re-checked: a directory
                    progress.deleted.append(decision)
                except (OSError, RecursionError) as exc:
                    why = describe_error(exc)
                    reason = f"moved to {TRASH_NAME}/{trash_name}, not removed: {why}; gc retries"
                    progress.failed.append(_failure(decision, reason))
        finally:
            os.close(trash_fd)
        _drop_trash_if_empty(root_fd)
    finally:
        os.close(root_fd)
    return progress.result(root, warnings, trash_cleared=cleared, in_trash=in_trash)


def _apply_in_place(
    root_fd: int, root: Path, victims: tuple[Decision, ...], progress: _Progress
) -> ApplyResult:
    """Delete each victim where it is: the disk is too full to create the trash.

    Each is re-checked as for the trash, then removed markers first (see
    :func:`~kempnerforge.checkpoint.store._trash.remove_in_place`).
    """
    readers = ReaderGuard(root)
    try:
        for decision in victims:
            name = step_dir_name(decision.step)
            refusal = recheck(root_fd, root, name, decision, readers)
            if refusal is VANISHED:
                progress.vanished.append(decision)
            elif refusal is not None:
                progress.skipped.append(
                    NotDeleted(step=decision.step, path=decision.path, reason=refusal)
                )
            else:
                try:
                    _delete_in_place(root_fd, name, decision, progress)
                finally:
                    readers.release(decision.step)
    finally:
        readers.close()
    progress.in_place = True
    return progress.result(root, [])


def _in_place_warning(root: Path, in_place: bool) -> list[str]:
    if not in_place:
        return []
    return [
        f"no space for {TRASH_NAME} in {root}: deleted in place instead (completeness markers "
        "first, so a half-deleted directory never looks complete)"
    ]


def _delete_in_place(root_fd: int, name: str, decision: Decision, progress: _Progress) -> None:
    progress.in_place = True
    try:
        remove_in_place(root_fd, name)
        progress.deleted.append(decision)
    except (OSError, RecursionError) as exc:
        why = describe_error(exc)
        reason = f"deleting it in place failed: {why}; its marker is gone, gc retries"
        progress.failed.append(_failure(decision, reason))


def _move_to_trash(
    root_fd: int,
    trash_fd: int,
    root: Path,
    victims: tuple[Decision, ...],
    progress: _Progress,
) -> list[tuple[Decision, str]]:
    """Re-check each victim and rename it into the trash; return (victim, trash name) pairs."""
    moved: list[tuple[Decision, str]] = []
    readers = ReaderGuard(root)
    try:
        for decision in victims:
            name = victim_name(decision.path, decision.step)
            refusal = recheck(root_fd, root, name, decision, readers)
            if refusal is VANISHED:
                progress.vanished.append(decision)
                continue
            if refusal is not None:
                progress.skipped.append(
                    NotDeleted(step=decision.step, path=decision.path, reason=refusal)
                )
                continue
            trash_name = f"{name}.{unique_suffix()}"
            try:
                move_to_trash(root_fd, name, trash_fd, trash_name)
            except FileNotFoundError:
                progress.vanished.append(decision)
                continue
            except OSError as exc:
                if no_space(exc):  # the rename needs room the disk no longer has
                    _delete_in_place(root_fd, name, decision, progress)
                else:
                    progress.failed.append(
                        _failure(decision, f"cannot move it: {describe_error(exc)}; untouched")
                    )
                continue
            finally:
                readers.release(decision.step)
            moved.append((decision, trash_name))
    finally:
        readers.close()
    return moved


def _sync(*fds: int) -> list[str]:
    try:
        for fd in fds:
            os.fsync(fd)
    except OSError as exc:
        return [f"fsync of the checkpoint root failed ({exc.strerror}); continuing"]
    return []


def _drop_trash_if_empty(root_fd: int) -> None:
    with contextlib.suppress(OSError):  # not empty (something could not be removed), or gone
        os.rmdir(TRASH_NAME, dir_fd=root_fd)


def _failure(decision: Decision, reason: str) -> NotDeleted:
    return NotDeleted(step=decision.step, path=decision.path, reason=reason)
