"""Pins: keep one checkpoint whatever retention would say (torch-free).

A pin is the file ``pinned.json`` (:data:`~kempnerforge.checkpoint.store.layout.PIN_NAME`) in
the step directory, published atomically::

    {"format": "kf-ckpt-pin", "format_version": 1, "step": 1500,
     "note": "best eval loss 2.31", "pinned_at": "2026-11-29T23:40:00+00:00",
     "user": "alice", "host": "node17"}

Its presence is the pin: retention keeps a pinned checkpoint with the reason ``pinned``, and a
pin never uses a ``keep_last_n`` slot. The fields only describe it, so a pin file that cannot be
parsed still pins (with a warning): when in doubt, keep.

The scan reads pins (:func:`read_pin`) on every cold walk, so this module imports little at the
top; what only the writers need is imported where they run. Pinning and unpinning take the
root's lock (:mod:`kempnerforge.checkpoint.store._lock`), the one
gc and the manager's retention hold while they scan, plan and delete: a concurrent gc either
finished before the pin (and the checkpoint is gone: the pin fails cleanly) or plans after it
(and sees the pin). Both keep the step directory's modification time as it was, so that a
checkpoint's age stays the time it was saved; the scan cache still notices (the directory's
ctime changes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.catalog import check_root
from kempnerforge.checkpoint.store.files import fsync_dir, write_json_atomic
from kempnerforge.checkpoint.store.layout import PIN_NAME, check_complete, step_dir_name
from kempnerforge.checkpoint.store.recorded import recorded_pp_stages
from kempnerforge.errors import CheckpointNotFoundError

__all__ = [
    "MAX_NOTE_CHARS",
    "PIN_FORMAT",
    "Pin",
    "PinResult",
    "UnpinResult",
    "check_note",
    "pin_checkpoint",
    "read_pin",
    "unpin_checkpoint",
]

PIN_FORMAT = "kf-ckpt-pin"
MAX_NOTE_CHARS = 500
_MAX_PIN_BYTES = 64 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, kw_only=True)
class Pin:
    """What a pin file records (each field None when the file does not say)."""

    note: str | None = None
    pinned_at: str | None = None
    """When it was pinned, ISO 8601 in UTC (``2026-11-29T23:40:00+00:00``)."""
    user: str | None = None
    host: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """The fields as a JSON object (the ``"pin"`` of ``kf-ckpt ls --json``)."""
        return {
            "note": self.note,
            "pinned_at": self.pinned_at,
            "user": self.user,
            "host": self.host,
        }


@dataclass(frozen=True, kw_only=True)
class PinResult:
    """What :func:`pin_checkpoint` did."""

    step: int
    path: Path
    """The step directory."""
    pin: Pin
    previous: Pin | None
    """The pin it replaced (the checkpoint was already pinned), else None."""


@dataclass(frozen=True, kw_only=True)
class UnpinResult:
    """What :func:`unpin_checkpoint` did."""

    step: int
    path: Path
    removed: Pin | None
    """The pin it removed; None when the checkpoint was not pinned (nothing changed)."""


def check_note(note: str | None) -> str | None:
    """``note`` with runs of whitespace (newlines, tabs) collapsed to one space.

    Raises:
        ValueError: the note is longer than :data:`MAX_NOTE_CHARS` characters.
    """
    if note is None:
        return None
    text = " ".join(str(note).split())
    if len(text) > MAX_NOTE_CHARS:
        raise ValueError(f"a pin note holds at most {MAX_NOTE_CHARS} characters, got {len(text)}")
    return text


def read_pin(step_dir: str | Path, *, dir_fd: int | None = None) -> tuple[Pin | None, str | None]:
    """The pin of a checkpoint and a warning: ``(None, None)`` when it is not pinned.

    A pin file that is unreadable, too large or not the expected JSON still pins: the result is
    an empty :class:`Pin` and a warning. A symlink or FIFO in its place is never followed or
    waited on (it pins, with a warning). With ``dir_fd``, a relative ``step_dir`` is resolved
    from that open directory.
    """
    try:
        fd = os.open(os.path.join(step_dir, PIN_NAME), _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        why = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        return Pin(), f"{PIN_NAME} {why}; the checkpoint counts as pinned"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Pin(), f"{PIN_NAME} is not a regular file; the checkpoint counts as pinned"
        raw = os.read(fd, _MAX_PIN_BYTES + 1)
    except OSError as exc:
        return Pin(), f"{PIN_NAME} cannot be read ({exc.strerror}); the checkpoint counts as pinned"
    finally:
        os.close(fd)
    try:
        if len(raw) > _MAX_PIN_BYTES:
            raise ValueError(f"over {_MAX_PIN_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return Pin(), f"corrupt {PIN_NAME} ({exc}); the checkpoint counts as pinned"
    return Pin(**{key: _text(data.get(key)) for key in ("note", "pinned_at", "user", "host")}), None


def _text(value: Any) -> str | None:
    return value[:MAX_NOTE_CHARS] if isinstance(value, str) else None


def pin_checkpoint(
    root: str | Path, step: int, *, note: str | None = None, wait_lock_s: float = 0.0
) -> PinResult:
    """Pin the complete checkpoint of ``step`` under ``root``, under the root's lock.

    Pinning a pinned checkpoint updates its time and user, and its note when ``note`` is given
    (an empty note clears it).

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        CheckpointNotFoundError: no checkpoint of ``step`` under ``root``, or it is incomplete.
        LockBusyError: another process holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file cannot be used.
        ValueError: ``note`` is too long.

    Example:
        >>> pin_checkpoint("runs/a/ckpt", 1500, note="best eval loss 2.31")  # doctest: +SKIP
        PinResult(step=1500, path=PosixPath('runs/a/ckpt/step_1500'), pin=Pin(...), previous=None)
    """
    import socket
    from datetime import UTC, datetime

    from kempnerforge.checkpoint.store._lock import hold_lock

    path = check_root(root)
    note = check_note(note)
    _existing_step_dir(path, step)  # before the lock: a wrong root gets no lock file
    with hold_lock(path, wait_lock_s=wait_lock_s):
        step_dir = _existing_step_dir(path, step)
        status = check_complete(step_dir, pp_stages=recorded_pp_stages(step_dir))
        if not status.complete:
            raise CheckpointNotFoundError(
                f"{step_dir} is incomplete ({status.reason}); only a complete checkpoint "
                "can be pinned"
            )
        previous, _ = read_pin(step_dir)
        pin = Pin(
            note=note if note is not None or previous is None else previous.note,
            pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
            user=_user(),
            host=socket.gethostname(),
        )
        document = {"format": PIN_FORMAT, "format_version": 1, "step": step, **pin.to_dict()}
        with _same_mtime(step_dir):
            write_json_atomic(step_dir / PIN_NAME, document)
    return PinResult(step=step, path=step_dir, pin=pin, previous=previous)


def unpin_checkpoint(root: str | Path, step: int, *, wait_lock_s: float = 0.0) -> UnpinResult:
    """Remove the pin of the checkpoint of ``step`` under ``root``, under the root's lock.

    A checkpoint that is not pinned is left as it is (``removed`` is None). Its pin gone, the
    checkpoint is subject to retention again: the next gc may delete it.

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        CheckpointNotFoundError: no checkpoint of ``step`` under ``root``.
        LockBusyError: another process holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file cannot be used.
    """
    from kempnerforge.checkpoint.store._lock import hold_lock

    path = check_root(root)
    _existing_step_dir(path, step)  # before the lock: a wrong root gets no lock file
    with hold_lock(path, wait_lock_s=wait_lock_s):
        step_dir = _existing_step_dir(path, step)
        removed, _ = read_pin(step_dir)
        if removed is not None:
            with _same_mtime(step_dir):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(step_dir / PIN_NAME)
                fsync_dir(step_dir)
    return UnpinResult(step=step, path=step_dir, removed=removed)


def _existing_step_dir(root: Path, step: int) -> Path:
    step_dir = root / step_dir_name(step)
    try:
        mode = os.lstat(step_dir).st_mode
    except FileNotFoundError:
        mode = None
    if mode is None or not stat.S_ISDIR(mode):
        what = (
            "no checkpoint"
            if mode is None
            else f"{step_dir.name} is not a directory, no checkpoint"
        )
        raise CheckpointNotFoundError(f"{what} for step {step} under {root}")
    return step_dir


@contextlib.contextmanager
def _same_mtime(step_dir: Path):  # type: ignore[no-untyped-def]
    """Restore the access and modification times of ``step_dir`` after the block."""
    before = os.stat(step_dir, follow_symlinks=False)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.utime(step_dir, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _user() -> str:
    import getpass  # the writer's only: a scan that reads pins never needs it

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the numeric id
        return str(os.getuid())
