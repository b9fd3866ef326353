"""The background half of a training process's retention: one thread that empties the trash.

A retention round on the training thread only renames its victims into ``<root>/.kf-trash/``
(:mod:`~kempnerforge.checkpoint.store._retire`); :class:`TrashEmptier` removes their files on
one background thread, with ``unlinkat``/``rmdir`` relative to directories opened with
``O_NOFOLLOW`` (:func:`~kempnerforge.checkpoint.store._trash.clear_trash`: a symlink is unlinked,
never followed). No lock, no collective: nothing else ever moves anything out of the trash, and
``kf-ckpt gc`` emptying the same trash at the same time is harmless. At most one thread runs; a
request while it runs asks it to look again rather than starting a second one. Its errors are
logged when they happen and kept for the caller to report again
(:meth:`TrashEmptier.take_problems`), never raised. Torch-free.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from kempnerforge.checkpoint.store._trash import clear_trash, open_trash
from kempnerforge.checkpoint.store.layout import TRASH_NAME
from kempnerforge.errors import KempnerForgeError

__all__ = ["TrashEmptier", "has_trash"]

# The public module's name, as before the split: log settings keyed on it keep working.
logger = logging.getLogger("kempnerforge.checkpoint.store.background")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class TrashEmptier:
    """The thread that empties ``root``'s trash: started on demand, at most one at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mutex = threading.Lock()  # guards the three fields below
        self._thread: threading.Thread | None = None
        self._again = False  # more victims were moved in while the thread was emptying
        self._problems: list[str] = []  # errors not yet taken by the caller

    def start(self) -> None:
        """Start emptying; if the thread is already at it, make it list the trash once more."""
        with self._mutex:
            if self._thread is not None:
                self._again = True
                return
            self._thread = threading.Thread(
                target=self._run, name=f"kf-ckpt trash emptier ({self.root})", daemon=True
            )
            self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the trash is emptied (at most ``timeout_s``); True when it is."""
        with self._mutex:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                return False
        return True

    def take_problems(self) -> list[str]:
        """Why entries could not be removed since the last call (each reported once)."""
        with self._mutex:
            problems, self._problems = self._problems, []
        return problems

    def _run(self) -> None:
        while True:
            try:
                problems = _empty_trash(self.root)
            except Exception as exc:  # a background thread must never die silently
                logger.exception("emptying %s failed", self.root / TRASH_NAME)
                problems = [f"{type(exc).__name__}: {exc}"]
            if problems:
                logger.error("could not empty %s: %s", self.root / TRASH_NAME, "; ".join(problems))
            with self._mutex:
                self._problems.extend(problems)
                if not self._again:
                    self._thread = None
                    return
                self._again = False


def has_trash(root: Path) -> bool:
    """``root`` has a trash directory (left by this process, another one, or a killed run)."""
    try:
        return stat.S_ISDIR(os.lstat(root / TRASH_NAME).st_mode)
    except OSError:
        return False


def _empty_trash(root: Path) -> list[str]:
    """Remove everything in ``root``'s trash; return why entries could not be removed."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        return [f"cannot open {root}: {exc.strerror}"]
    try:
        trash_fd = open_trash(root_fd, create=False)
        if trash_fd is None:
            return []  # emptied and removed by a concurrent gc
        try:
            return clear_trash(trash_fd)[1]
        finally:
            os.close(trash_fd)
    except KempnerForgeError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"cannot list {root / TRASH_NAME}: {exc.strerror}"]
    finally:
        os.close(root_fd)
