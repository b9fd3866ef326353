"""Publishing files atomically and moving ``latest``: the write side of the on-disk format.

Every file we publish (metadata.json, train_state.pt, the scan cache) is written to a sibling
temp name, fsynced and renamed over its final name, so a reader never sees half a file. The
``latest`` symlink is swapped the same way. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.layout import LATEST_NAME, parse_step, step_dir_name

__all__ = [
    "TEMP_MARK",
    "LatestLink",
    "TempName",
    "fsync_dir",
    "parse_temp_name",
    "read_latest",
    "temp_name",
    "unique_suffix",
    "update_latest",
    "write_bytes_atomic",
    "write_json_atomic",
]


TEMP_MARK = ".kf-tmp-"
_TEMP_RE = re.compile(
    rf"\.(?P<final>.+){re.escape(TEMP_MARK)}(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]+"
)


def unique_suffix() -> str:
    """12 random hex digits, for names that must not collide (temp files, trash entries).

    ``os.urandom``, not :mod:`secrets`: importing secrets (hashlib, OpenSSL) costs a ``kf-ckpt
    ls`` about 7 ms for nothing.
    """
    return os.urandom(6).hex()


def temp_name(final: str) -> str:
    """The hidden sibling name a file is written under before it is renamed to ``final``.

    ``.<final>.kf-tmp-<host>.<pid>.<random>``: the writer's host and pid let a later run tell a
    file left by a killed writer (same host, no such process) from one still being written, and
    the random part keeps two threads of one process apart.
    """
    return f".{final}{TEMP_MARK}{os.uname().nodename}.{os.getpid()}.{unique_suffix()}"


@dataclass(frozen=True, kw_only=True)
class TempName:
    """What a :func:`temp_name` says: the file it will become, and who writes it."""

    final: str
    host: str
    pid: int


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a :func:`temp_name`, or None for any other name."""
    match = _TEMP_RE.fullmatch(name)
    if match is None:
        return None
    return TempName(final=match["final"], host=match["host"], pid=int(match["pid"]))


@dataclass(frozen=True, kw_only=True)
class LatestLink:
    """The ``latest`` symlink: the step it names when honoured, else why it is ignored."""

    step: int | None
    target: str | None = None
    warning: str | None = None


def read_latest(root: Path) -> LatestLink:
    """Where ``<root>/latest`` points.

    Honoured only when it is a symlink whose target is a direct child ``step_<N>`` of ``root``
    that is a real directory (not itself a symlink): a relative ``step_<N>``, or an absolute
    path whose parent is ``root`` itself. Anything else (``/etc``, ``..``, a loop, a dangling
    link) is reported and ignored.
    """
    link = root / LATEST_NAME
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return LatestLink(step=None)
    except OSError as exc:
        return LatestLink(step=None, warning=f"{LATEST_NAME} is not a symlink ({exc.strerror})")
    norm = os.path.normpath(target)
    if os.path.isabs(norm) and _same_dir(os.path.dirname(norm), root):
        norm = os.path.basename(norm)
    step = parse_step(norm) if os.sep not in norm and not os.path.isabs(norm) else None
    if step is None:
        return LatestLink(
            step=None,
            target=target,
            warning=f"{LATEST_NAME} -> {target} is not a step_<N> dir inside the root; ignored",
        )
    candidate = root / norm
    if candidate.is_symlink() or not candidate.is_dir():
        return LatestLink(
            step=None,
            target=target,
            warning=f"{LATEST_NAME} -> {target} is not a directory; ignored",
        )
    return LatestLink(step=step, target=target)


def _same_dir(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (rename, symlink) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` atomically: write a sibling temp file, fsync, ``os.replace``."""
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Publish a JSON document atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def update_latest(root: Path, step: int) -> None:
    """Point ``<root>/latest`` at ``step_<step>`` atomically (symlink a temp name, then rename)."""
    tmp = root / temp_name(LATEST_NAME)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(step_dir_name(step), tmp)
    try:
        os.replace(tmp, root / LATEST_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(root)
