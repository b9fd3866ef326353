"""Is a process of this host still the one that wrote a lease? Linux ``/proc`` probes for
:mod:`.lease`: the boot id, a pid's start time (so that a recycled pid is told apart) and
whether it still runs (a zombie does not), and the host name. Off Linux each answers what it
can."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["boot_id", "hostname", "process_alive", "start_ticks"]


def boot_id() -> str | None:
    """This host's boot id (Linux), so that a lease from before a reboot is told apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on); None off Linux."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split() if ")" in raw else None


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in ticks since boot); None off Linux."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def process_alive(pid: int, pid_start: int | None) -> bool:
    """Does process ``pid`` run on this host, started at ``pid_start`` (when known)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    fields = _proc_stat(pid)
    if fields is None:  # gone meanwhile, or no /proc: then the pid exists, that is all we know
        return not os.path.exists("/proc/self/stat")
    if fields[0] in ("Z", "X"):
        return False  # a zombie writes nothing: it has exited, only not been reaped
    if pid_start is None:
        return True
    try:
        return int(fields[19]) == pid_start
    except (ValueError, IndexError):
        return True


def hostname() -> str:
    """This host's name, as :func:`socket.gethostname` gives it; the socket module is imported
    only when a lease is written or judged (a warm ``ls`` with no save in flight never needs it)."""
    import socket

    return socket.gethostname()
