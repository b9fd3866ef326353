"""The scan cache of a checkpoint root, ``<root>/.kf-ckpt.cache``: complete checkpoints walked once.

On Lustre or GPFS every ``lstat`` of a scan is a round trip to a metadata server, and a root
holds thousands of checkpoints of dozens of files. A complete checkpoint never changes (DCP
writes ``.metadata`` last, and nothing writes into a finished save), so what one walk found out
about it (size, file count, newest mtime, what metadata.json records) is kept here and reused
while the checkpoint provably has not changed.

An entry is reused only when the stamps ``(dev, ino, mtime_ns, ctime_ns)`` recorded by the walk
(:mod:`kempnerforge.checkpoint._walk`) still match: the step directory's (from the root
listing), every subdirectory's and metadata.json's. Adding, removing or renaming anything in any
directory of the checkpoint changes that directory's mtime; replacing the step directory with
another of the same name changes its inode or ctime; rewriting metadata.json in place changes
its stamp. What is never cached:

* an incomplete checkpoint, or one whose walk had warnings (an unreadable directory) or whose
  ``.metadata`` is a symlink (its completeness depends on something outside the tree);
* a checkpoint whose newest mtime lies within :data:`RACY_WINDOW_S` of the scan: a change in the
  same timestamp tick as the walk could leave every stamp as it was (git's "racy" entries).

Reading and writing never follow a symlink at the cache's path; a cache that is not a regular
file owned by this user, is corrupt, foreign or over :data:`MAX_CACHE_BYTES` counts as empty. It
is written (sibling temp file, then ``os.replace``) only when an entry changed, and a failed
write (read-only root, quota) is ignored: the cache only ever saves work, the scan never
depends on it. gc's re-checks before deleting never read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import time
from typing import Any

from kempnerforge.checkpoint._walk import Stamp, StepWalk, stamp_of
from kempnerforge.checkpoint.layout import CACHE_NAME, METADATA_JSON

__all__ = ["MAX_CACHE_BYTES", "RACY_WINDOW_S", "ScanCache", "is_cache_entry"]

RACY_WINDOW_S = 2.0
"""A checkpoint written this recently (newest mtime) is walked again next time, not cached."""
MAX_CACHE_BYTES = 256 * 2**20
"""A cache file larger than this is ignored (an entry is well under 1 kB)."""
_FORMAT, _VERSION = "kf-ckpt-scan-cache", 1
_TEMP_SUFFIX = ".tmp"
_STALE_TEMP_S = 600.0  # a temp file older than this was left by a killed writer
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def is_cache_entry(name: str) -> bool:
    """``name`` is the cache file or one of its temp files (toolkit entries, not reported)."""
    return name == CACHE_NAME or (name.startswith(CACHE_NAME + ".") and name.endswith(_TEMP_SUFFIX))


class ScanCache:
    """The cache of one scan: look entries up, remember new ones, save once at the end.

    Args:
        root_fd: the checkpoint root, open as a directory.
        enabled: False makes every lookup miss and :meth:`save` a no-op (nothing is read).
    """

    def __init__(self, root_fd: int, *, enabled: bool = True) -> None:
        self._root_fd = root_fd
        self._enabled = enabled
        self._loaded: dict[str, Any] = _load(root_fd) if enabled else {}
        self._fresh: dict[str, Any] = {}
        self._changed = False
        self._temps: list[str] = []
        self.hits = 0

    def lookup(self, entry: os.DirEntry[str]) -> dict[str, Any] | None:
        """The recorded ``CheckpointInfo`` fields of the step directory ``entry`` of the root.

        None unless every stamp still matches; the caller then walks the checkpoint.
        """
        name = entry.name
        recorded = self._loaded.get(name)
        if recorded is None:
            return None
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        fields = _reusable(self._root_fd, name, st, recorded)
        if fields is None:
            return None
        self._fresh[name] = recorded
        self.hits += 1
        return fields

    def remember(
        self, name: str, walk: StepWalk, fields: dict[str, Any], *, scanned_at_s: float
    ) -> None:
        """Record a freshly walked checkpoint, when it is complete, clean and not racy."""
        cacheable = (
            self._enabled
            and fields["complete"]
            and fields["scan_error"] is None
            and not walk.warnings
            and not walk.marker_via_symlink
            and "" in walk.dir_stamps
            and walk.mtime_s <= scanned_at_s - RACY_WINDOW_S
        )
        if not cacheable:
            return
        meta = walk.metadata_stamp
        self._fresh[name] = {
            "dirs": {rel: list(stamp) for rel, stamp in walk.dir_stamps.items()},
            "meta": None if meta is None else list(meta),
            "info": {**fields, "warnings": list(fields["warnings"])},
        }
        self._changed = True

    def note_temp(self, name: str) -> None:
        """A temp file of the cache seen in the root (removed on save when it is stale)."""
        self._temps.append(name)

    def save(self) -> None:
        """Write the cache when an entry was added or dropped; errors are ignored."""
        if not self._enabled:
            return
        self._remove_stale_temps()
        if not self._changed and len(self._fresh) == len(self._loaded):
            return
        doc = {"format": _FORMAT, "version": _VERSION, "entries": self._fresh}
        data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = f"{CACHE_NAME}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, _WRITE_FLAGS, 0o644, dir_fd=self._root_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            # rename replaces whatever is at CACHE_NAME (a symlink included) and follows nothing.
            os.replace(tmp, CACHE_NAME, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._root_fd)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_S
        for name in self._temps:
            with contextlib.suppress(OSError):
                st = os.lstat(name, dir_fd=self._root_fd)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(name, dir_fd=self._root_fd)


def _load(root_fd: int) -> dict[str, Any]:
    """The entries of the cache file; empty when it is missing, foreign, corrupt or unsafe."""
    try:
        fd = os.open(CACHE_NAME, _READ_FLAGS, dir_fd=root_fd)
    except OSError:  # missing, a symlink (ELOOP), unreadable
        return {}
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_size > MAX_CACHE_BYTES
        ):
            return {}
        chunks, total = [], 0
        while chunk := os.read(fd, 2**20):
            total += len(chunk)
            if total > MAX_CACHE_BYTES:
                return {}
            chunks.append(chunk)
        doc = json.loads(b"".join(chunks))
    except (OSError, ValueError, RecursionError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        return {}
    entries = doc.get("entries")
    return entries if isinstance(entries, dict) else {}


def _reusable(root_fd: int, name: str, st: os.stat_result, entry: Any) -> dict[str, Any] | None:
    """The fields of ``entry`` when it is well formed and all its stamps match; else None."""
    try:
        dirs, meta = entry["dirs"], entry["meta"]
        if _stamp(dirs[""]) != stamp_of(st):
            return None
        for rel, recorded in dirs.items():
            if rel and (not _safe_rel(rel) or not _matches(root_fd, f"{name}/{rel}", recorded)):
                return None
        meta_path = f"{name}/{METADATA_JSON}"
        if meta is None:
            if _exists(root_fd, meta_path):
                return None
        elif not _matches(root_fd, meta_path, meta):
            return None
        return _fields(entry["info"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _matches(root_fd: int, path: str, recorded: Any) -> bool:
    try:
        return stamp_of(os.lstat(path, dir_fd=root_fd)) == _stamp(recorded)
    except OSError:
        return False


def _exists(root_fd: int, path: str) -> bool:
    try:
        os.lstat(path, dir_fd=root_fd)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: do not reuse
    return True


def _stamp(value: Any) -> Stamp:
    if not isinstance(value, list) or len(value) != 4 or not all(_is_int(v) for v in value):
        raise ValueError("not a stamp")
    return (value[0], value[1], value[2], value[3])


def _safe_rel(rel: Any) -> bool:
    """A relative path below the step directory, as the walk records them."""
    return isinstance(rel, str) and all(p not in ("", ".", "..") for p in rel.split("/"))


def _fields(info: Any) -> dict[str, Any]:
    """Validate the recorded ``CheckpointInfo`` fields of a complete checkpoint."""
    tokens, config, warnings = info["tokens_seen"], info["recorded_config"], info["warnings"]
    ok = (
        info["complete"] is True
        and info["incomplete_reason"] is None
        and info["scan_error"] is None
        and (tokens is None or _is_int(tokens))
        and isinstance(info["dynamic_milestone"], bool)
        and (config is None or isinstance(config, dict))
        and _is_int(info["size_bytes"])
        and _is_int(info["file_count"])
        and isinstance(info["mtime_s"], float)
        and isinstance(warnings, list)
        and all(isinstance(w, str) for w in warnings)
    )
    if not ok or len(info) != len(_FIELDS):
        raise ValueError("malformed cache entry")
    return {key: info[key] for key in _FIELDS} | {"warnings": tuple(warnings)}


_FIELDS = (
    "complete",
    "incomplete_reason",
    "tokens_seen",
    "dynamic_milestone",
    "recorded_config",
    "size_bytes",
    "file_count",
    "mtime_s",
    "warnings",
    "scan_error",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
