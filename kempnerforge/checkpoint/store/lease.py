"""The writer lease of an in-flight save: who is writing it, and whether that writer still lives.

Every save is written into its own in-flight directory (see :mod:`.layout`), and rank 0 of the
writing job keeps a lease file, ``.kf-lease``, inside it: a small JSON document naming the step,
the owner token of the job, the host, the process id and its start time, and the host's boot id.
A background thread refreshes the lease's mtime every :data:`LEASE_HEARTBEAT_S` seconds while the
save is in flight.

Whether the writer is alive is judged without trusting any clock where possible:

* a lease written on **this host** (same host name and boot id) is live exactly when its process
  still runs (the same pid with the same start time: a recycled pid does not count);
* a lease written on **another host** is live while its heartbeat is recent: the age of the
  lease's mtime is measured against the file system's own clock (:func:`file_system_now`, the
  mtime of a file touched right now in the same root), not against this host's clock, so skew
  between hosts and the file server cancels out. A heartbeat older than :data:`LEASE_TTL_S`, or
  dated more than that *ahead* of the file system's clock (no live writer can refresh it so),
  marks the save abandoned.

The verdict is data (:class:`LeaseVerdict`: a :class:`LeaseState`, the writer, the heartbeat's
age in seconds); ``kf-ckpt`` words it. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

from kempnerforge.checkpoint.store._process import boot_id, hostname, process_alive, start_ticks
from kempnerforge.checkpoint.store.files import write_json_atomic
from kempnerforge.checkpoint.store.layout import LEASE_NAME, LOCK_NAME
from kempnerforge.checkpoint.store.recorded import json_int, tagged_document

__all__ = [
    "LEASE_HEARTBEAT_S",
    "LEASE_TTL_S",
    "Heartbeat",
    "Lease",
    "LeaseState",
    "LeaseVerdict",
    "file_system_now",
    "judge_lease",
    "judge_writer",
    "new_lease",
    "read_lease",
    "write_lease",
]

LEASE_HEARTBEAT_S = 10.0
"""How often the writer refreshes its lease (the lease file's mtime)."""
LEASE_TTL_S = 300.0
"""A lease from another host whose heartbeat is older than this (by the file system's clock)
has expired: thirty missed heartbeats. A lease from this host expires as soon as its process
exits, whatever the clocks say."""
_MAX_LEASE_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Lease:
    """Who writes an in-flight save (the content of its ``.kf-lease``)."""

    step: int
    owner: str
    """The owner token of the job writing it (see :mod:`.owner`)."""
    host: str
    pid: int
    pid_start: int | None = None
    """The process's start time in clock ticks since boot (Linux), so a recycled pid differs."""
    boot_id: str | None = None
    started_at: str = ""
    heartbeat_s: float = LEASE_HEARTBEAT_S


class LeaseState(StrEnum):
    """What an in-flight save's lease says about its writer (see the module docstring)."""

    running = "running"
    """Written on this host, and its process still runs: live."""
    exited = "exited"
    """Written on this host, and its process has exited (or its pid was recycled): gone."""
    rebooted = "rebooted"
    """Written on this host before its last reboot: gone."""
    beating = "beating"
    """Written on another host, with a heartbeat younger than the TTL: live."""
    stale = "stale"
    """Written on another host, with no heartbeat for longer than the TTL: gone."""
    ahead = "ahead"
    """Its heartbeat is dated more than the TTL ahead of the file system's clock: gone."""
    heartbeat_unreadable = "heartbeat_unreadable"
    """The lease file's mtime is not a number, so it cannot show life: gone."""
    missing = "missing"
    """No lease file: the writer is unknown (judge the save by its mtime)."""
    corrupt = "corrupt"
    """A lease file that is not a lease (foreign, truncated, too large): unknown."""
    unreadable = "unreadable"
    """The lease file exists but cannot be read (see ``LeaseVerdict.error``): unknown."""

    @property
    def live(self) -> bool | None:
        """True while the writer lives, False once it is gone, None when there is no lease."""
        if self in (LeaseState.running, LeaseState.beating):
            return True
        return (
            None
            if self in (LeaseState.missing, LeaseState.corrupt, LeaseState.unreadable)
            else False
        )


_NO_LEASE = (LeaseState.missing, LeaseState.corrupt, LeaseState.unreadable)


@dataclass(frozen=True, kw_only=True)
class LeaseVerdict:
    """Whether an in-flight save still has a live writer, and the facts that say so."""

    state: LeaseState
    lease: Lease | None = None
    """The writer (host, pid, owner); None when there is no readable lease."""
    heartbeat_age_s: float | None = None
    """Seconds from the last heartbeat (the lease file's mtime) to the clock it was judged on;
    negative when dated ahead of it. None without a lease or with an unreadable mtime."""
    error: str | None = None
    """Why the lease file could not be read (the OS's words), for ``LeaseState.unreadable``."""

    @property
    def live(self) -> bool | None:
        """True while the writer lives, False once it is gone, None when there is no lease."""
        if self.state in (LeaseState.running, LeaseState.beating):
            return True
        return None if self.state in _NO_LEASE else False


def new_lease(step: int, owner: str) -> Lease:
    """The lease of a save of ``step`` written by this process for the job ``owner``."""
    pid = os.getpid()
    return Lease(
        step=step,
        owner=owner,
        host=hostname(),
        pid=pid,
        pid_start=start_ticks(pid),
        boot_id=boot_id(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_lease(save_dir: Path, lease: Lease) -> None:
    """Publish ``lease`` as ``<save_dir>/.kf-lease`` (atomically)."""
    write_json_atomic(save_dir / LEASE_NAME, {"format": "kf-lease", **asdict(lease)})


def read_lease(save_dir: Path) -> tuple[Lease | None, float | None, LeaseVerdict | None]:
    """``(lease, its mtime, problem)``: a missing, foreign or corrupt lease is a problem.

    The problem is the verdict such a save gets (state ``missing``, ``corrupt`` or
    ``unreadable``: the writer is unknown). Never follows a symlink and never reads more than
    64 kB.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(save_dir / LEASE_NAME, flags)
    except FileNotFoundError:
        return None, None, LeaseVerdict(state=LeaseState.missing)
    except OSError as exc:
        return None, None, LeaseVerdict(state=LeaseState.unreadable, error=exc.strerror)
    try:
        mtime_s = os.fstat(fd).st_mtime
        raw = os.read(fd, _MAX_LEASE_BYTES + 1)
    except OSError as exc:
        return None, None, LeaseVerdict(state=LeaseState.unreadable, error=exc.strerror)
    finally:
        os.close(fd)
    lease = _parse(raw) if len(raw) <= _MAX_LEASE_BYTES else None
    if lease is None:
        return None, mtime_s, LeaseVerdict(state=LeaseState.corrupt)
    return lease, mtime_s, None


def _parse(raw: bytes) -> Lease | None:
    data = tagged_document(raw, "kf-lease")
    if data is None:
        return None
    step, pid = data.get("step"), data.get("pid")
    owner, host = data.get("owner"), data.get("host")
    if not (json_int(step) and json_int(pid) and isinstance(owner, str) and isinstance(host, str)):
        return None
    pid_start = data.get("pid_start")
    boot_id = data.get("boot_id")
    heartbeat = data.get("heartbeat_s")
    return Lease(
        step=step,
        owner=owner,
        host=host,
        pid=pid,
        pid_start=pid_start if json_int(pid_start) else None,
        boot_id=boot_id if isinstance(boot_id, str) else None,
        started_at=str(data.get("started_at", "")),
        heartbeat_s=float(heartbeat) if _is_number(heartbeat) else LEASE_HEARTBEAT_S,
    )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def file_system_now(root: Path) -> float | None:
    """The file system's clock: the mtime of the root's lock file, touched right now.

    Comparing an mtime with this (rather than with ``time.time()``) measures an age on one
    clock, the file server's, whatever the skew of the host that scans. None when the lock file
    cannot be touched (no lock file yet, a read-only root): callers then fall back to this
    host's clock. Never creates a file.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(root / LOCK_NAME, flags)
    except OSError:
        return None
    try:
        os.utime(fd)  # "now", as the file system sets it (server time on NFS)
        return os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


def judge_lease(
    lease: Lease, lease_mtime_s: float, now_s: float, *, ttl_s: float = LEASE_TTL_S
) -> LeaseVerdict:
    """Is the writer of ``lease`` alive? (See the module docstring for the rules.)

    Args:
        lease: the lease read from the in-flight directory.
        lease_mtime_s: the lease file's mtime (its last heartbeat).
        now_s: the file system's clock (:func:`file_system_now`), else this host's.
        ttl_s: the age at which a heartbeat from another host has expired.
    """
    age_s: float | None = now_s - lease_mtime_s
    if age_s != age_s:  # NaN: a corrupt mtime cannot show life
        age_s = None
    host = hostname()
    if lease.host == host and lease.boot_id == boot_id():
        alive = process_alive(lease.pid, lease.pid_start)
        state = LeaseState.running if alive else LeaseState.exited
    elif lease.host == host and lease.boot_id is not None and boot_id():
        state = LeaseState.rebooted
    elif age_s is None:
        state = LeaseState.heartbeat_unreadable
    elif age_s > ttl_s:
        state = LeaseState.stale
    elif age_s < -ttl_s:
        state = LeaseState.ahead
    else:
        state = LeaseState.beating
    return LeaseVerdict(state=state, lease=lease, heartbeat_age_s=age_s)


def judge_writer(save_dir: Path, now_s: float) -> LeaseVerdict:
    """The verdict on the writer of the in-flight save ``save_dir``; ages measured at ``now_s``."""
    lease, mtime_s, problem = read_lease(save_dir)
    if lease is None or mtime_s is None:
        return problem or LeaseVerdict(state=LeaseState.missing)
    return judge_lease(lease, mtime_s, now_s)


class Heartbeat:
    """Refreshes a lease file's mtime every ``interval_s`` on a daemon thread until stopped.

    Example:
        >>> beat = Heartbeat(save_dir / ".kf-lease")  # doctest: +SKIP
        >>> beat.stop()  # the save is written  # doctest: +SKIP
    """

    def __init__(self, path: Path, interval_s: float = LEASE_HEARTBEAT_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kf-lease-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            with contextlib.suppress(OSError):  # the save was published or discarded meanwhile
                os.utime(self._path)

    def stop(self) -> None:
        """Stop refreshing (idempotent); returns once the thread has ended."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
