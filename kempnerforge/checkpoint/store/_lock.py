"""The advisory lock of a checkpoint root, ``<root>/.kf-ckpt.lock`` (``fcntl.flock``).

Whoever deletes checkpoints (gc, the manager's cleanup) holds it exclusively, so two of them
never act on the same directory at once. The lock belongs to an open file description: it is
released when the descriptor is closed, also when the process dies (SIGKILL included), so a
crash never leaves a stale lock behind. The lock file itself is never removed (removing it
would let two processes lock two different files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kempnerforge.checkpoint.store.layout import LOCK_NAME, READERS_NAME, parse_step
from kempnerforge.errors import LockBusyError, Remedy, RetentionError

__all__ = ["ReaderGuard", "hold_lock", "lock_is_held", "read_lease"]

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.2


@contextlib.contextmanager
def hold_lock(root: Path, *, wait_lock_s: float = 0.0, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the exclusive lock of ``root`` for the duration of the ``with`` block.

    ``name`` picks the lock: the root's lock (gc, retention, replacing a checkpoint) by default,
    or :data:`~kempnerforge.checkpoint.store.layout.PUBLISH_LOCK_NAME`, which serialises
    publishing and taking ownership (taken first when both are needed, never the other way).

    ``flock(LOCK_EX | LOCK_NB)`` is polled until ``wait_lock_s`` seconds have passed (0: try
    once; ``math.inf``: wait for as long as it takes). The lock is per open file, so a second
    ``hold_lock`` on the same root in the same process is busy too: do not nest them.

    Example:
        >>> with hold_lock(Path("runs/a/ckpt"), wait_lock_s=30):  # doctest: +SKIP
        ...     ...  # replace a checkpoint directory

    Raises:
        LockBusyError: another process still holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file cannot be opened (read-only root, a symlink planted there).
    """
    path = root / name
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise RetentionError(
            f"cannot open the lock file {path}: {exc.strerror}; it must be a regular file "
            f"in a directory you can write (remove it if it is a symlink)"
        ) from exc
    try:
        _acquire(fd, path, wait_lock_s)
        _record_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def read_lease(step_dir: Path) -> Iterator[bool]:
    """Hold a read lease on the checkpoint ``step_dir`` for the ``with`` block: gc skips it.

    A shared ``lockf`` byte-range lock on byte ``step`` of ``<root>/.kf-ckpt.readers``; gc takes
    the same byte exclusively (without waiting) while it moves a victim away, and leaves a
    checkpoint whose byte is held for a later round. Taking the lease waits for a gc that is
    moving this very checkpoint (milliseconds): afterwards the caller must check that it still
    exists. Yields False when no lease could be taken (a read-only root: nothing of ours may be
    written there, and the read goes ahead unprotected), or ``step_dir`` is not a ``step_<N>``.
    """
    step = parse_step(step_dir.name)
    held = step is not None and _leases.take(step_dir.parent, step)
    try:
        yield held
    finally:
        if held:
            _leases.give_back(step_dir.parent, step)  # type: ignore[arg-type]


class _Leases:
    """The read leases this process holds: one descriptor per root, a count per step.

    POSIX record locks belong to the process, and closing *any* descriptor of a file drops
    every lock the process holds on it. Two leases of one process on one root (``diff A B``,
    ``trace``, an export that verifies) must therefore share one descriptor, and a byte is
    unlocked only when its last lease ends.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._roots: dict[str, tuple[int, dict[int, int]]] = {}

    def take(self, root: Path, step: int) -> bool:
        key = os.path.realpath(root)
        with self._mutex:
            fd, counts = self._roots.get(key, (None, {}))
            if fd is None:
                fd = _open_readers(root, create=True)
                if fd is None:
                    return False
            if counts.get(step, 0) == 0:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_SH, 1, step)
                except OSError:
                    if not counts:
                        os.close(fd)
                    return False
            counts[step] = counts.get(step, 0) + 1
            self._roots[key] = (fd, counts)
            return True

    def give_back(self, root: Path, step: int) -> None:
        key = os.path.realpath(root)
        with self._mutex:
            fd, counts = self._roots[key]
            counts[step] -= 1
            if counts[step] == 0:
                del counts[step]
                with contextlib.suppress(OSError):
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, step)
            if not counts:
                del self._roots[key]
                os.close(fd)


_leases = _Leases()


def _open_readers(root: Path, *, create: bool) -> int | None:
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(root / READERS_NAME, flags | os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
        with contextlib.suppress(OSError):  # any user of the root may lock it (not our umask's)
            os.fchmod(fd, 0o666)
        return fd
    except OSError:
        try:
            return os.open(root / READERS_NAME, flags | os.O_RDONLY)
        except OSError:
            return None


class ReaderGuard:
    """gc's side of the read leases of one root: hold a victim's byte while it is moved."""

    def __init__(self, root: Path) -> None:
        self._fd = _open_readers(root, create=False)

    def try_exclusive(self, step: int) -> bool:
        """Take byte ``step`` exclusively; False when a reader holds it (do not delete)."""
        if self._fd is None:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, step)
        except (BlockingIOError, PermissionError):
            return False
        except OSError:
            return True  # a file system without byte-range locks: no leases to honour
        return True

    def release(self, step: int) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, step)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_is_held(root: Path) -> bool:
    """Does some process hold the lock of ``root`` right now (a gc deleting, a save replacing)?

    Tested with a shared, non-blocking ``flock`` that is released at once; nothing is created.
    False when there is no lock file or it cannot be opened.
    """
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False


def _acquire(fd: int, path: Path, wait_lock_s: float) -> None:
    # A negative or NaN wait means "do not wait" (NaN would otherwise poll forever).
    deadline = time.monotonic() + (wait_lock_s if wait_lock_s >= 0 else 0.0)
    delay = _POLL_MIN_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = _read_holder(fd)
                raise LockBusyError(
                    f"{path} is held by another process{holder} (a save or a gc); retry later",
                    remedy=Remedy.wait_lock,
                ) from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX_S)


def _record_holder(fd: int) -> None:
    """Write who holds the lock into the lock file, for the busy message of others."""
    with contextlib.suppress(OSError):
        note = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)


def _read_holder(fd: int) -> str:
    try:
        note = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" ({note})" if note else ""
