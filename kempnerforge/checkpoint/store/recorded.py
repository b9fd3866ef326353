"""What a checkpoint records in its ``metadata.json``, read as untrusted input, and the two
checks every small JSON record of the store shares (:func:`json_int`, :func:`tagged_document`).

A missing, unreadable, oversized, non-UTF-8, hostile (nested too deep) or corrupt file is a
warning, never a crash: the scan records it and goes on. A symlink is never followed and a FIFO
never blocks. Torch-free.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from kempnerforge.checkpoint.store.layout import METADATA_JSON

__all__ = [
    "MetadataRead",
    "json_int",
    "pp_stages_of",
    "read_metadata_json",
    "recorded_pp_stages",
    "tagged_document",
]


_METADATA_MAX_BYTES = 16 * 2**20  # a metadata.json is a few kB; refuse to slurp a huge file


_READ_CHUNK = 2**16


_METADATA_MAX_DEPTH = 32  # ours nests 3 levels; deeper is hostile (and would recurse later)


@dataclass(frozen=True, kw_only=True)
class MetadataRead:
    """What ``metadata.json`` of a checkpoint says, or why it could not be read."""

    data: dict[str, Any] | None
    warning: str | None = None
    missing: bool = False
    """There is no metadata.json at all (as opposed to one that cannot be read)."""


def read_metadata_json(step_dir: str | Path, *, dir_fd: int | None = None) -> MetadataRead:
    """Read ``metadata.json``; a missing, unreadable or corrupt file is a warning, not a crash.

    A symlink is never followed, a FIFO named ``metadata.json`` never blocks, and a file over
    16 MiB is refused rather than read. With ``dir_fd``, a relative ``step_dir`` is resolved
    from that open directory (as in :mod:`os`), which saves path lookups in large scans.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(step_dir, METADATA_JSON), flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return MetadataRead(data=None, warning=f"no {METADATA_JSON}", missing=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW refused a symlink
            return MetadataRead(data=None, warning=f"{METADATA_JSON} is a symlink; ignored")
        return MetadataRead(data=None, warning=f"cannot read {METADATA_JSON}: {exc}")
    try:
        chunks = [os.read(fd, _READ_CHUNK)]
        # No fstat: a short read of a regular file is its end (fast scans read thousands).
        while len(chunks[-1]) == _READ_CHUNK:
            if len(chunks) * _READ_CHUNK > _METADATA_MAX_BYTES:
                limit = f"over the {_METADATA_MAX_BYTES} byte limit"
                return MetadataRead(data=None, warning=f"{METADATA_JSON} is {limit}; ignored")
            chunks.append(os.read(fd, _READ_CHUNK))
        text = b"".join(chunks).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return MetadataRead(data=None, warning=f"cannot read {METADATA_JSON}: {exc}")
    finally:
        os.close(fd)
    try:
        data = json.loads(text)
    except RecursionError:
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: nested too deep")
    except ValueError as exc:  # also an integer of more digits than Python converts
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: {exc}")
    if not isinstance(data, dict):
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: not a JSON object")
    if _deeper_than(data, _METADATA_MAX_DEPTH):
        deep = f"nested deeper than {_METADATA_MAX_DEPTH} levels"
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: {deep}")
    return MetadataRead(data=data)


def _deeper_than(data: Any, limit: int) -> bool:
    """Does ``data`` (parsed JSON) nest containers more than ``limit`` levels? (No recursion.)"""
    level: list[Any] = [data]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def pp_stages_of(data: Mapping[str, Any] | None) -> int | None:
    """The ``pp_stages`` count a metadata.json document records, if it is a valid integer."""
    stages = (data or {}).get("pp_stages")
    return stages if json_int(stages) else None


def recorded_pp_stages(step_dir: Path) -> int | None:
    """The number of pipeline stages recorded in ``metadata.json``, if any."""
    return pp_stages_of(read_metadata_json(step_dir).data)


def json_int(value: Any) -> TypeGuard[int]:
    """``value`` (read from JSON) is an integer: ``true`` and ``false`` are not."""
    return isinstance(value, int) and not isinstance(value, bool)


def tagged_document(raw: bytes, tag: str) -> dict[str, Any] | None:
    """The JSON object in ``raw`` whose ``"format"`` is ``tag``; None for anything else
    (not UTF-8, not JSON, not an object, another format). The caller bounds ``raw``'s size."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("format") == tag else None
