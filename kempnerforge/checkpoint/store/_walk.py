"""One walk of a checkpoint directory: size, file count, newest mtime, completeness markers.

:func:`checkpoint_fields` turns a walk and the checkpoint's metadata.json into the fields of a
:class:`~kempnerforge.checkpoint.store.records.CheckpointInfo`.

This is the hot loop of :func:`kempnerforge.checkpoint.store.catalog.scan` (thousands of
checkpoints,
tens of files each): one listing per directory and one ``lstat`` per entry, relative to an open
directory descriptor, and little else. Symlinks are counted (their own ``lstat`` size) and never
followed: only entries whose ``lstat`` says "directory" are descended into, and each is opened
with ``O_NOFOLLOW``.

The walk also records the stamps the scan cache validates against (see
:mod:`kempnerforge.checkpoint.store._scan_cache`): the ``(dev, ino, mtime_ns, ctime_ns)`` of every
directory and of ``metadata.json``, each taken *before* the directory is listed or the file is
read, so any later change shows up as a different stamp.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    METADATA_JSON,
    PIN_NAME,
    Completeness,
    assess_complete,
    parse_pp_stage,
)
from kempnerforge.checkpoint.store.metrics import recorded_metrics
from kempnerforge.checkpoint.store.pins import read_pin
from kempnerforge.checkpoint.store.recorded import MetadataRead, pp_stages_of, read_metadata_json

__all__ = ["Stamp", "StepWalk", "checkpoint_fields", "stamp_of", "walk_step_dir"]

Stamp = tuple[int, int, int, int]
"""``(st_dev, st_ino, st_mtime_ns, st_ctime_ns)``: changes whenever an entry is added, removed
or renamed in a directory, or a file is rewritten; a replacement has another inode or ctime."""


def stamp_of(st: os.stat_result) -> Stamp:
    """The :data:`Stamp` of a stat result."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


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


def checkpoint_fields(
    root_fd: int, name: str, step: int, walk: StepWalk, *, meta: MetadataRead | None = None
) -> dict[str, Any]:
    """The ``CheckpointInfo`` fields (all but step, path and is_latest) of step directory
    ``name`` of the root open as ``root_fd``: what ``walk`` found, plus its metadata.json
    (read here unless the caller already read it as ``meta``)."""
    if meta is None:
        meta = read_metadata_json(name, dir_fd=root_fd)
    data = meta.data or {}
    # A save writes metadata.json early but not first: its absence in an unfinished save is
    # normal, and warning about it on every cron run would only be noise.
    quiet = meta.data is None and not walk.has_dcp_metadata and not walk.stages and meta.missing
    warnings = [*walk.warnings, *([meta.warning] if meta.warning and not quiet else [])]
    unreadable = [f"pp{k}/" for k, ok in sorted(walk.stages.items()) if ok is None]
    scan_error = None
    if not walk.listed or unreadable:
        scan_error = "cannot read " + (", ".join(unreadable) if walk.listed else f"{name}/")
    pin, pin_warning = read_pin(name, dir_fd=root_fd) if walk.has_pin else (None, None)
    if pin_warning:
        warnings.append(pin_warning)
    pp_stages = pp_stages_of(data)
    if walk.stages or pp_stages is not None:
        status = assess_complete(
            has_dcp_metadata=walk.has_dcp_metadata,
            stages={k: bool(ok) for k, ok in walk.stages.items()},
            pp_stages=pp_stages,
        )
    else:
        status = _single_stage_status(walk.has_dcp_metadata)
    complete = status.complete and scan_error is None
    reason = scan_error or status.reason
    corrupt = complete and bool(walk.empty_markers)
    if corrupt:
        where = ", ".join(m for m in walk.empty_markers if m != "./")
        complete = False
        reason = f"DCP {DCP_METADATA} is empty (0 bytes)" + (f" in {where}" if where else "")
    return {
        "complete": complete,
        "incomplete_reason": reason,
        "tokens_seen": _recorded_int(data, "tokens_seen", warnings),
        "dynamic_milestone": _recorded_flag(data, warnings),
        "recorded_config": _recorded_config(data, warnings),
        "metrics": recorded_metrics(data, warnings),
        "pin": pin,
        "size_bytes": walk.size_bytes,
        "file_count": walk.file_count,
        "mtime_s": walk.mtime_s,
        "warnings": tuple(warnings + _step_mismatch(data, step)),
        "scan_error": scan_error,
        "size_known": True,
        "corrupt": corrupt,
        "verified": False,
        "run_id": _recorded_str(data, "run_id"),
    }


@functools.cache
def _single_stage_status(has_dcp_metadata: bool) -> Completeness:
    """``assess_complete`` of a checkpoint without pipeline stages: one of two answers, made
    once rather than once per checkpoint of a cold scan."""
    return assess_complete(has_dcp_metadata=has_dcp_metadata, stages={})


def _recorded_int(data: dict[str, Any], key: str, warnings: list[str]) -> int | None:
    value = data.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    warnings.append(f"metadata.json {key} is not an integer: {value!r}; ignored")
    return None


def _recorded_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _recorded_flag(data: dict[str, Any], warnings: list[str]) -> bool:
    value = data.get("dynamic_milestone", False)
    if isinstance(value, bool):
        return value
    warnings.append(f"metadata.json dynamic_milestone is not true/false: {value!r}; ignored")
    return False


def _recorded_config(data: dict[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    value = data.get("checkpoint")
    if value is None or isinstance(value, dict):
        return value
    warnings.append(f"metadata.json checkpoint is not a table: {value!r}; ignored")
    return None


def _step_mismatch(data: dict[str, Any], step: int) -> list[str]:
    recorded = data.get("step")
    if recorded is None or recorded == step:
        return []
    return [f"metadata.json records step {recorded!r}, the directory is step {step}"]
