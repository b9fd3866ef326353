"""The re-check of one retention victim under the root's lock, just before it is deleted.

A plan is made from a scan; by the time a victim's turn comes (:mod:`.apply`, under the lock) it
may have changed. :func:`recheck` is the last word: the victim must still be a real directory
(not a symlink) directly inside the root, not the ``latest`` target, not pinned, not a pending
directory whose writer may still be alive, and no export or show may hold its read lease.
Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from kempnerforge.checkpoint.store._lock import ReaderGuard
from kempnerforge.checkpoint.store._pending import pending_refusal
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import PIN_NAME, step_dir_name
from kempnerforge.checkpoint.store.retention import Decision

__all__ = ["VANISHED", "recheck"]

VANISHED = "vanished"
""":func:`recheck`'s verdict for a victim that is already gone (counted as done)."""


def recheck(
    root_fd: int, root: Path, name: str, decision: Decision, readers: ReaderGuard
) -> str | None:
    """Why ``decision``'s victim must not be deleted now, ``VANISHED``, or None to go ahead.

    Going ahead, the victim's read-lease byte is held (``readers.release`` it once it is moved):
    an export or show that starts meanwhile waits, then finds it gone.
    """
    if decision.path != root / name:
        return f"{decision.path} is not the directory {name} directly inside {root}"
    try:
        st = os.lstat(name, dir_fd=root_fd)
    except FileNotFoundError:
        return VANISHED
    if stat.S_ISLNK(st.st_mode):
        return f"{name} is now a symlink; symlinks are never followed or deleted"
    if not stat.S_ISDIR(st.st_mode):
        return f"{name} is no longer a directory"
    if name != step_dir_name(decision.step):
        return pending_refusal(root, name)
    if read_latest(root).step == decision.step:
        return f"{name} is now the target of latest"
    with contextlib.suppress(FileNotFoundError):
        os.lstat(f"{name}/{PIN_NAME}", dir_fd=root_fd)
        return f"{name} is now pinned"
    if not readers.try_exclusive(decision.step):
        return f"{name} is being read (an export or show holds a read lease); a later gc deletes it"
    return None
