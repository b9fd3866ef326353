"""Finishing a swap a kill interrupted, and moving pending directories into the trash.

:func:`~kempnerforge.checkpoint.store.publish.publish_save` replaces an existing ``step_<N>`` in
two renames: the old copy is set aside as ``.kf-replaced.step_<N>.<id>``, then the new one is
renamed in. A kill between the two leaves no ``step_<N>``; :func:`recover_swaps` (run by the next
resume and by every ``kf-ckpt gc``, under the root's lock) renames the old copy back, so a
complete checkpoint of the step is always reachable. Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store._trash import move_to_trash, open_trash
from kempnerforge.checkpoint.store.files import fsync_dir, unique_suffix
from kempnerforge.checkpoint.store.layout import PendingKind, parse_pending, step_dir_name
from kempnerforge.errors import KempnerForgeError

__all__ = ["RECOVER_LOCK_WAIT_S", "discard_save", "recover_root", "recover_swaps", "trash_entry"]

logger = logging.getLogger(__name__)

RECOVER_LOCK_WAIT_S = 300.0
"""How long a resume waits for the root's lock to finish an interrupted swap."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def recover_swaps(root: Path) -> list[str]:
    """Finish swaps a kill interrupted (hold the root's lock); return what was done, in words.

    An old copy set aside (``.kf-replaced.step_<N>.*``) goes back to ``step_<N>`` when no
    ``step_<N>`` exists (the kill came before the new copy was renamed in), else to the trash.
    """
    done: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return done
    for name in names:
        pending = parse_pending(name)
        if pending is None or pending.kind is not PendingKind.replaced:
            continue
        target = root / step_dir_name(pending.step)
        if not target.exists() and not target.is_symlink():
            try:
                os.rename(root / name, target)
            except OSError as exc:
                done.append(f"could not restore {name} to {target.name}: {exc.strerror}")
                continue
            fsync_dir(root)
            done.append(f"restored {target.name} from {name} (a replacing save was interrupted)")
            logger.warning("%s: %s", root, done[-1])
        elif trash_entry(root, name):
            done.append(f"moved {name} to the trash ({target.name} was replaced)")
    return done


def discard_save(root: Path, save_dir: Path) -> None:
    """Move this process's failed in-flight directory into the trash (best effort)."""
    if parse_pending(save_dir.name) is None or save_dir.parent != root:
        return
    if not trash_entry(root, save_dir.name):
        logger.warning("could not discard %s; the next retention round removes it", save_dir)


def trash_entry(root: Path, name: str) -> bool:
    """Rename ``root/name`` into the root's trash without following symlinks; True if moved."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return False
    try:
        trash_fd = open_trash(root_fd, create=True)
        if trash_fd is None:
            return False
        try:
            move_to_trash(root_fd, name, trash_fd, f"{name}.{unique_suffix()}")
        finally:
            os.close(trash_fd)
        with contextlib.suppress(OSError):
            os.fsync(root_fd)
        return True
    except (OSError, KempnerForgeError) as exc:  # best effort: the next gc removes it
        logger.debug("could not move %s/%s to the trash: %s", root, name, exc)
        return False
    finally:
        os.close(root_fd)


def recover_root(root: Path, *, wait_lock_s: float = RECOVER_LOCK_WAIT_S) -> list[str]:
    """:func:`recover_swaps` under the root's lock, when a swap was interrupted (else no I/O
    beyond one listing). A busy or unusable lock is logged, not raised: a resume goes on."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    pending = [parse_pending(name) for name in names]
    if not any(p is not None and p.kind is PendingKind.replaced for p in pending):
        return []
    try:
        with hold_lock(root, wait_lock_s=wait_lock_s):
            return recover_swaps(root)
    except KempnerForgeError as exc:
        logger.warning("%s: could not finish an interrupted save swap: %s", root, exc)
        return []
