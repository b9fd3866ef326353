"""The scan cache of a checkpoint root, ``<root>/.kf-ckpt.cache``: complete checkpoints walked once.

On Lustre or GPFS every ``lstat`` of a scan is a round trip to a metadata server, and a root
holds thousands of checkpoints of dozens of files. A complete checkpoint never changes (DCP
writes ``.metadata`` last, and nothing writes into a finished save), so what one walk found out
about it (size, file count, newest mtime, what metadata.json records) is kept here and reused
while the checkpoint provably has not changed.

An entry is reused only when the stamps ``(dev, ino, mtime_ns, ctime_ns)`` recorded by the walk
(:mod:`kempnerforge.checkpoint.store._walk`) still match: the step directory's (from the root
listing), every subdirectory's and metadata.json's. Adding, removing or renaming anything in any
directory of the checkpoint changes that directory's mtime; replacing the step directory with
another of the same name changes its inode or ctime; rewriting metadata.json in place changes
its stamp. What is never cached:

* an incomplete checkpoint, or one whose walk had warnings (an unreadable directory) or whose
  ``.metadata`` is a symlink (its completeness depends on something outside the tree);
* a checkpoint whose newest mtime lies within :data:`RACY_WINDOW_S` of the scan: a change in the
  same timestamp tick as the walk could leave every stamp as it was (git's "racy" entries).

What the stamps cannot see: a file other than metadata.json rewritten in place (the shards of a
finished save never are; its size would stay as recorded), and directory attributes a network
file system client serves from a stale attribute cache. Neither can make gc delete the wrong
thing: :func:`~kempnerforge.checkpoint.store.collect.collect_garbage` re-checks on disk the
completeness of
the checkpoints it keeps in its victims' place, and every victim itself, before deleting.

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
import stat
import time
from typing import TYPE_CHECKING, Any

from kempnerforge.checkpoint.store.files import parse_temp_name, temp_name
from kempnerforge.checkpoint.store.layout import CACHE_NAME, METADATA_JSON

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store._walk import StepWalk

__all__ = ["MAX_CACHE_BYTES", "RACY_WINDOW_S", "ScanCache", "is_cache_entry"]

RACY_WINDOW_S = 2.0
"""A checkpoint written this recently (newest mtime) is walked again next time, not cached."""
MAX_CACHE_BYTES = 256 * 2**20
"""A cache file larger than this is ignored (an entry is well under 1 kB)."""
_FORMAT, _VERSION = "kf-ckpt-scan-cache", 4
_STALE_TEMP_S = 600.0  # a temp file older than this was left by a killed writer
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def is_cache_entry(name: str) -> bool:
    """``name`` is the cache file or one of its temp files (toolkit entries, not reported)."""
    if name == CACHE_NAME:
        return True
    temp = parse_temp_name(name)
    return temp is not None and temp.final == CACHE_NAME


_Entry = list[Any]
"""One cached checkpoint, positionally (compact to parse): the step directory's stamp, the stamps
of its subdirectories ``{relative path: stamp}``, metadata.json's stamp (or null), then the
``CheckpointInfo`` fields ``tokens_seen``, ``dynamic_milestone``, the index of its
``recorded_config`` in the file's ``configs`` table (or null), ``size_bytes``, ``file_count``,
``mtime_s``, ``warnings``, ``metrics``, ``pin`` (its fields as an object, or null),
``run_id`` and ``verified`` (the full check of :mod:`kempnerforge.checkpoint.store.verify`
passed). Only complete checkpoints are cached, so ``complete`` is implied."""


class ScanCache:
    """The cache of one scan: look entries up, remember new ones, save once at the end.

    Args:
        root_fd: the checkpoint root, open as a directory.
        enabled: False makes every lookup miss and :meth:`save` a no-op (nothing is read).
    """

    def __init__(self, root_fd: int, *, enabled: bool = True) -> None:
        self._root_fd = root_fd
        self._enabled = enabled
        self._loaded, self._configs = _load(root_fd) if enabled else ({}, [])
        self._fresh: dict[str, tuple[_Entry, dict[str, Any] | None]] = {}
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
            if not _unchanged(self._root_fd, name, st, recorded):
                return None
            fields = _fields(recorded, self._configs)
        except (OSError, LookupError, TypeError, ValueError, AttributeError):
            return None  # gone, or a malformed entry: walk it
        self._fresh[name] = (recorded, fields["recorded_config"])
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
        entry = [
            list(walk.dir_stamps[""]),
            {rel: list(stamp) for rel, stamp in walk.dir_stamps.items() if rel},
            None if meta is None else list(meta),
            fields["tokens_seen"],
            fields["dynamic_milestone"],
            None,  # the config's index, assigned on save
            fields["size_bytes"],
            fields["file_count"],
            fields["mtime_s"],
            list(fields["warnings"]),
            fields["metrics"],
            None if fields["pin"] is None else fields["pin"].to_dict(),
            fields.get("run_id"),
            fields["verified"],
        ]
        self._fresh[name] = (entry, fields["recorded_config"])
        self._changed = True

    def mark_verified(self, name: str) -> None:
        """The full check passed on step directory ``name`` (looked up or remembered here)."""
        entry = self._fresh.get(name)
        if entry is not None and entry[0][-1] is not True:
            entry[0][-1] = True  # verified is the last field
            self._changed = True

    def forget(self, name: str) -> None:
        """Drop ``name``: the full check failed, the checkpoint is not complete after all."""
        if self._fresh.pop(name, None) is not None:
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
        data = json.dumps(_document(self._fresh), separators=(",", ":")).encode()
        tmp = temp_name(CACHE_NAME)
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


def _document(fresh: dict[str, tuple[_Entry, dict[str, Any] | None]]) -> dict[str, Any]:
    """The cache file's JSON document; each distinct recorded config is stored once."""
    configs: list[dict[str, Any]] = []
    # Keyed by repr, which tells apart what == would not (1, 1.0 and true) at a third of the
    # cost of json.dumps (a table written in another key order is merely stored twice), and
    # by id for the checkpoints taken from the cache, which share one dict per config.
    index: dict[str, int] = {}
    by_id: dict[int, int] = {}
    entries = {}
    for name, (entry, config) in fresh.items():
        ref = None
        if config is not None:
            ref = by_id.get(id(config))
            if ref is None:
                ref = by_id[id(config)] = index.setdefault(repr(config), len(configs))
                if ref == len(configs):
                    configs.append(config)
        entries[name] = [*entry[:5], ref, *entry[6:]]
    return {"format": _FORMAT, "version": _VERSION, "configs": configs, "entries": entries}


def _load(root_fd: int) -> tuple[dict[str, Any], list[Any]]:
    """The entries and configs of the cache file; empty when missing, foreign, corrupt or unsafe."""
    empty: tuple[dict[str, Any], list[Any]] = ({}, [])
    try:
        fd = os.open(CACHE_NAME, _READ_FLAGS, dir_fd=root_fd)
    except OSError:  # missing, a symlink (ELOOP), unreadable
        return empty
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_size > MAX_CACHE_BYTES
        ):
            return empty
        chunks, total = [], 0
        while chunk := os.read(fd, 2**20):
            total += len(chunk)
            if total > MAX_CACHE_BYTES:
                return empty
            chunks.append(chunk)
        doc = json.loads(b"".join(chunks))
    except (OSError, ValueError, RecursionError):
        return empty
    finally:
        os.close(fd)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        return empty
    entries, configs = doc.get("entries"), doc.get("configs")
    if not isinstance(entries, dict) or not isinstance(configs, list):
        return empty
    return entries, configs


def _unchanged(root_fd: int, name: str, st: os.stat_result, entry: Any) -> bool:
    """Do the stamps of ``entry`` still match the step directory ``name`` (lstat ``st``)?"""
    if entry[0] != [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]:
        return False
    for rel, recorded in entry[1].items():
        if not _safe_rel(rel) or _stamp_at(root_fd, f"{name}/{rel}") != recorded:
            return False
    return _stamp_at(root_fd, f"{name}/{METADATA_JSON}") == entry[2]


def _stamp_at(root_fd: int, path: str) -> list[int] | None:
    """The stamp of ``path`` (no symlink followed at its end) as a list; None when it is gone."""
    try:
        st = os.lstat(path, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _safe_rel(rel: Any) -> bool:
    """A relative path below the step directory, as the walk records them."""
    return isinstance(rel, str) and all(p not in ("", ".", "..") for p in rel.split("/"))


def _fields(entry: Any, configs: list[Any]) -> dict[str, Any]:
    """The ``CheckpointInfo`` fields of a well-formed entry; ValueError when it is not."""
    (
        _,
        _,
        _,
        tokens,
        milestone,
        ref,
        size,
        files,
        mtime,
        warnings,
        metrics,
        pin,
        run_id,
        verified,
    ) = entry
    if ref is None:
        config = None
    elif type(ref) is int and 0 <= ref < len(configs) and type(configs[ref]) is dict:
        config = configs[ref]  # shared by the checkpoints that recorded the same table
    else:
        raise ValueError("bad config reference")
    ok = (
        (tokens is None or type(tokens) is int)
        and type(milestone) is bool
        and type(size) is int
        and type(files) is int
        and type(mtime) is float
        and type(warnings) is list
        and (not warnings or all(type(w) is str for w in warnings))
        and type(metrics) is dict
        and all(v is None or type(v) in (int, float) for v in metrics.values())
        and (pin is None or (type(pin) is dict and all(type(k) is str for k in pin)))
        and type(verified) is bool
        and (run_id is None or type(run_id) is str)
    )
    if not ok:
        raise ValueError("malformed cache entry")
    return {
        "complete": True,
        "incomplete_reason": None,
        "tokens_seen": tokens,
        "dynamic_milestone": milestone,
        "recorded_config": config,
        "size_bytes": size,
        "file_count": files,
        "mtime_s": mtime,
        "warnings": tuple(warnings),
        "scan_error": None,
        "metrics": metrics,
        "pin": None if pin is None else _pin(pin),
        "size_known": True,
        "corrupt": False,
        "verified": verified,
        "run_id": run_id,
    }


def _pin(fields: dict[str, Any]) -> Any:
    from kempnerforge.checkpoint.store.pins import Pin

    return Pin(
        **{k: v for k, v in fields.items() if k in _PIN_KEYS and type(v) in (str, type(None))}
    )


_PIN_KEYS = frozenset({"note", "pinned_at", "user", "host"})
