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

The file itself, its entries and how it is read and written safely (a cache that cannot be
trusted counts as empty) are :mod:`kempnerforge.checkpoint.store._cache_file`'s. It is written
only when an entry changed, and a failed write (read-only root, quota) is ignored: the cache only
ever saves work, the scan never depends on it. gc's re-checks before deleting never read it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kempnerforge.checkpoint.store._cache_file import (
    CacheEntry,
    Stamp,
    decode_entry,
    read_cache,
    remove_stale_temps,
    stamp_of,
    write_cache,
)
from kempnerforge.checkpoint.store.layout import METADATA_JSON
from kempnerforge.checkpoint.store.records import CheckpointFacts

if TYPE_CHECKING:  # a scan served by the cache never walks: the walk is not imported
    from kempnerforge.checkpoint.store._walk import StepWalk

__all__ = ["RACY_WINDOW_S", "ScanCache"]

RACY_WINDOW_S = 2.0
"""A checkpoint written this recently (newest mtime) is walked again next time, not cached."""


class ScanCache:
    """The cache of one scan: look entries up, remember new ones, save once at the end.

    Args:
        root_fd: the checkpoint root, open as a directory.
        enabled: False makes every lookup miss and :meth:`save` a no-op (nothing is read).
    """

    def __init__(self, root_fd: int, *, enabled: bool = True) -> None:
        self._root_fd = root_fd
        self._enabled = enabled
        self._loaded, self._configs = read_cache(root_fd) if enabled else ({}, [])
        self._fresh: dict[str, CacheEntry] = {}
        """The entries the file will hold: those looked up and still valid, and new ones."""
        self._changed = False
        self._temps: list[str] = []
        self.hits = 0

    def lookup(self, entry: os.DirEntry[str]) -> CheckpointFacts | None:
        """What the cache recorded about the step directory ``entry`` of the root.

        None unless every stamp still matches; the caller then walks the checkpoint.
        """
        name = entry.name
        recorded = self._loaded.get(name)
        if recorded is None:
            return None
        try:
            cached = decode_entry(recorded, self._configs)
            st = entry.stat(follow_symlinks=False)
            if not _unchanged(self._root_fd, name, st, cached):
                return None
        except (OSError, LookupError, TypeError, ValueError, AttributeError):
            return None  # gone, or a malformed entry: walk it
        self._fresh[name] = cached
        self.hits += 1
        return cached.facts

    def remember(
        self, name: str, walk: StepWalk, facts: CheckpointFacts, *, scanned_at_s: float
    ) -> None:
        """Record a freshly walked checkpoint, when it is complete, clean and not racy."""
        cacheable = (
            self._enabled
            and facts.complete
            and facts.scan_error is None
            and not walk.warnings
            and not walk.marker_via_symlink
            and "" in walk.dir_stamps
            and walk.mtime_s <= scanned_at_s - RACY_WINDOW_S
        )
        if not cacheable:
            return
        subdirs = {rel: stamp for rel, stamp in walk.dir_stamps.items() if rel}
        self._fresh[name] = CacheEntry(walk.dir_stamps[""], subdirs, walk.metadata_stamp, facts)
        self._changed = True

    def mark_verified(self, name: str) -> None:
        """The full check passed on step directory ``name`` (looked up or remembered here)."""
        cached = self._fresh.get(name)
        if cached is not None and not cached.facts.verified:
            self._fresh[name] = cached._replace(facts=cached.facts._replace(verified=True))
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
        remove_stale_temps(self._root_fd, self._temps)
        if self._changed or len(self._fresh) != len(self._loaded):
            write_cache(self._root_fd, self._fresh)


def _unchanged(root_fd: int, name: str, st: os.stat_result, cached: CacheEntry) -> bool:
    """Do the stamps of ``cached`` still match the step directory ``name`` (lstat ``st``)?"""
    if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != cached.step_dir:
        return False
    for rel, recorded in cached.subdirs.items():
        if not _safe_rel(rel) or _stamp_at(root_fd, f"{name}/{rel}") != recorded:
            return False
    return _stamp_at(root_fd, f"{name}/{METADATA_JSON}") == cached.metadata


def _stamp_at(root_fd: int, path: str) -> Stamp | None:
    """The stamp of ``path`` (no symlink followed at its end); None when it is gone."""
    try:
        st = os.lstat(path, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    return stamp_of(st)


def _safe_rel(rel: object) -> bool:
    """A relative path below the step directory, as the walk records them."""
    return isinstance(rel, str) and all(p not in ("", ".", "..") for p in rel.split("/"))
