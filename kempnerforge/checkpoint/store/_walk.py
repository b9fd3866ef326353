"""One walk of a checkpoint directory: size, file count, newest mtime, completeness markers.

:func:`~kempnerforge.checkpoint.store._facts.checkpoint_facts` turns a walk and the checkpoint's
metadata.json into a :class:`~kempnerforge.checkpoint.store.records.CheckpointFacts`.

This is the hot loop of :func:`kempnerforge.checkpoint.store.catalog.scan` (thousands of
checkpoints,
tens of files each): one listing per directory and one ``lstat`` per entry, relative to an open
directory descriptor, and little else. Symlinks are counted (their own ``lstat`` size) and never
followed: only entries whose ``lstat`` says "directory" are descended into, and each is opened
with ``O_NOFOLLOW``.

The walk also records the stamps the scan cache validates against (see
:mod:`kempnerforge.checkpoint.store._scan_cache`): the
:data:`~kempnerforge.checkpoint.store._cache_file.Stamp` of every directory and of
``metadata.json``, each taken *before* the directory is listed or the file is read, so any later
change shows up as a different stamp.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from kempnerforge.checkpoint.store._cache_file import Stamp, stamp_of
from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    METADATA_JSON,
    PIN_NAME,
    parse_pp_stage,
)

__all__ = ["StepWalk", "walk_step_dir"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR
_MAX_DEPTH = 32  # a checkpoint is two or three levels deep; deeper nesting is not walked


@dataclass(slots=True)
class StepWalk:
    """What one walk of a step directory found (mutable while the walk runs)."""

    size_bytes: int = 0
    file_count: int = 0
    mtime_s: float = 0.0
    listed: bool = True
    """The step directory itself was listed in full."""
    has_dcp_metadata: bool = False
    """The step directory holds DCP's ``.metadata`` (a regular file, or a symlink to one)."""
    stages: dict[int, bool | None] = field(default_factory=dict)
    """``k`` of each ``pp<k>/`` stage -> it holds ``.metadata``; None when it cannot be read."""
    vanished: bool = False
    """The step directory was removed before it could be listed."""
    warnings: list[str] = field(default_factory=list)
    inodes: set[tuple[int, int]] = field(default_factory=set)
    dir_stamps: dict[str, Stamp] = field(default_factory=dict)
    """Relative path of every directory walked (``""``: the step directory) -> its stamp."""
    metadata_stamp: Stamp | None = None
    """The stamp of ``metadata.json`` in the step directory (None when there is none)."""
    marker_via_symlink: bool = False
    """A ``.metadata`` marker is a symlink: completeness depends on something outside the tree."""
    has_pin: bool = False
    """The step directory holds a pin file (its mtime is not the checkpoint's age)."""
    empty_markers: list[str] = field(default_factory=list)
    """Relative paths of the directories whose ``.metadata`` is empty (0 bytes): corrupt."""


def walk_step_dir(parent_fd: int, name: str) -> StepWalk:
    """Walk the step directory ``name`` of the directory open as ``parent_fd``.

    Every directory is opened relative to its parent with ``O_NOFOLLOW`` and its entries are
    stat'ed relative to it (cheaper than full paths, and no symlink can redirect the walk).
    Sizes are apparent sizes (``st_size``), the directory itself included, hard links counted
    once: the figure ``du -sb`` prints for the same directory.
    """
    walk = StepWalk()
    listed, has_metadata = _descend(parent_fd, name, "", walk, 0)
    walk.listed, walk.has_dcp_metadata = listed, has_metadata
    return walk


def _descend(parent_fd: int, name: str, rel: str, walk: StepWalk, depth: int) -> tuple[bool, bool]:
    """Walk one directory; return (listed in full, holds .metadata)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        walk.vanished = walk.vanished or depth == 0
        return True, False
    except OSError as exc:
        walk.warnings.append(f"cannot read {rel or './'}: {exc.strerror}; size is a lower bound")
        return False, False
    try:
        if depth == 0:
            own = os.fstat(fd)
            walk.size_bytes, walk.mtime_s = own.st_size, own.st_mtime
            walk.dir_stamps[""] = stamp_of(own)
        listed, has_metadata, subdirs = _list(fd, rel, walk)
        for sub in subdirs:
            if depth >= _MAX_DEPTH:
                walk.warnings.append(
                    f"{rel}{sub}/ is nested too deep; its contents are not counted"
                )
                continue
            sub_listed, sub_has = _descend(fd, sub, f"{rel}{sub}/", walk, depth + 1)
            stage = parse_pp_stage(sub) if depth == 0 else None
            if stage is not None:
                walk.stages[stage] = sub_has if sub_listed else None
    finally:
        os.close(fd)
    return listed, has_metadata


def _list(fd: int, rel: str, walk: StepWalk) -> tuple[bool, bool, list[str]]:
    """Tally the entries of one directory; return (listed in full, has .metadata, subdirs)."""
    size = files = 0
    mtime = walk.mtime_s
    has_metadata = False
    subdirs: list[str] = []
    marker = DCP_METADATA
    meta_name = None if rel else METADATA_JSON  # only the step directory's own metadata.json
    lstat = os.lstat
    try:
        # listdir + lstat(dir_fd=) is the leanest per-entry loop Python offers: one fstatat each.
        for name in os.listdir(fd):
            try:
                st = lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue  # renamed or removed meanwhile (a save's temp file, a gc)
            mode = st.st_mode
            if mode & _S_IFMT == _S_IFDIR:  # lstat: a real directory, never a symlink to one
                subdirs.append(name)
                walk.dir_stamps[rel + name] = stamp_of(st)  # taken before it is listed
            else:
                if name == meta_name:
                    walk.metadata_stamp = stamp_of(st)  # taken before scan reads it
                elif name == PIN_NAME and not rel:
                    walk.has_pin = True
                    files += 1
                    size += st.st_size
                    continue  # pinning later does not make a checkpoint younger
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in walk.inodes:
                        continue
                    walk.inodes.add(key)
                files += 1
                if name == marker:
                    has_metadata = _is_file(fd, mode)
                    walk.marker_via_symlink |= has_metadata and not stat.S_ISREG(mode)
                    if has_metadata and stat.S_ISREG(mode) and st.st_size == 0:
                        walk.empty_markers.append(rel or "./")
            size += st.st_size
            if st.st_mtime > mtime:
                mtime = st.st_mtime
        listed = True
    except OSError as exc:
        listed = False
        walk.warnings.append(f"cannot read {rel or './'}: {exc.strerror}; size is a lower bound")
    walk.size_bytes += size
    walk.file_count += files
    walk.mtime_s = mtime
    return listed, has_metadata, subdirs


def _is_file(dir_fd: int, mode: int) -> bool:
    """As ``check_complete`` does, a symlink to a regular file counts as the marker."""
    if stat.S_ISREG(mode):
        return True
    try:
        return stat.S_ISLNK(mode) and stat.S_ISREG(os.stat(DCP_METADATA, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
