"""The scan cache's file ``<root>/.kf-ckpt.cache``: its entries, their JSON form, safe reads/writes.

In memory an entry is a :class:`CacheEntry`: the stamps it is valid for and the
:class:`~kempnerforge.checkpoint.store.records.CheckpointFacts` of the checkpoint. On disk it is a
compact JSON list (parsing 2,000 of them is a noticeable part of a warm ``kf-ckpt ls``): the step
directory's stamp, the stamps of its subdirectories ``{relative path: stamp}``, metadata.json's
stamp (or null), then ``tokens_seen``, ``dynamic_milestone``, the index of its
``recorded_config`` in the document's ``configs`` table (or null), ``size_bytes``,
``file_count``, ``mtime_s``, ``warnings``, ``metrics``, ``pin`` (its fields as an object, or
null), ``run_id`` and ``verified``. Only complete checkpoints are cached, so ``complete`` is
implied. Each distinct recorded config is stored once, in ``configs``.

Everything read back is untrusted: :func:`decode_entry` checks every type, and a file that is
not a regular file owned by this user, is corrupt, foreign or over :data:`MAX_CACHE_BYTES`
reads as empty. Reading and writing never follow a symlink at the cache's path; the file is
written as a sibling temp file, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from kempnerforge.checkpoint.store.files import parse_temp_name, temp_name
from kempnerforge.checkpoint.store.layout import CACHE_NAME
from kempnerforge.checkpoint.store.records import CheckpointFacts

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.pins import Pin

__all__ = [
    "MAX_CACHE_BYTES",
    "CacheEntry",
    "Stamp",
    "decode_entry",
    "is_cache_entry",
    "read_cache",
    "remove_stale_temps",
    "stamp_of",
    "write_cache",
]

MAX_CACHE_BYTES = 256 * 2**20
"""A cache file larger than this is ignored (an entry is well under 1 kB)."""
_FORMAT, _VERSION = "kf-ckpt-scan-cache", 4
_FIELDS = 14  # the length of an entry's list
_STALE_TEMP_S = 600.0  # a temp file older than this was left by a killed writer
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PIN_KEYS = frozenset({"note", "pinned_at", "user", "host"})

Stamp = tuple[int, int, int, int]
"""``(st_dev, st_ino, st_mtime_ns, st_ctime_ns)``: changes whenever an entry is added, removed
or renamed in a directory, or a file is rewritten; a replacement has another inode or ctime."""


def stamp_of(st: os.stat_result) -> Stamp:
    """The :data:`Stamp` of a stat result."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class CacheEntry(NamedTuple):
    """One cached checkpoint: the stamps it is valid for, taken by the walk
    (:mod:`kempnerforge.checkpoint.store._walk`) before it listed or read anything, and what the
    walk found."""

    step_dir: Stamp
    subdirs: dict[str, Stamp]
    """Relative path of every directory below the step directory -> its stamp."""
    metadata: Stamp | None
    """metadata.json's stamp; None when the checkpoint has none."""
    facts: CheckpointFacts


def is_cache_entry(name: str) -> bool:
    """``name`` is the cache file or one of its temp files (toolkit entries, not reported)."""
    if name == CACHE_NAME:
        return True
    temp = parse_temp_name(name)
    return temp is not None and temp.final == CACHE_NAME


def decode_entry(raw: object, configs: list[object]) -> CacheEntry:
    """The entry stored as ``raw`` (``configs``: the document's table); ValueError, TypeError,
    LookupError or AttributeError when it is malformed."""
    if type(raw) is not list or len(raw) != _FIELDS:
        raise ValueError("malformed cache entry")
    (
        own,
        subdirs,
        meta,
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
    ) = raw
    config = None
    if ref is not None:
        table = configs[ref] if type(ref) is int and ref >= 0 else None
        if type(table) is not dict:
            raise ValueError("no such recorded config")
        config = table  # shared by the checkpoints that recorded the same table
    ok = (
        (tokens is None or type(tokens) is int)
        and type(milestone) is bool
        and type(size) is int
        and type(files) is int
        and type(mtime) is float
        and type(warnings) is list
        and (not warnings or all(type(w) is str for w in warnings))
        and type(metrics) is dict
        and (not metrics or all(v is None or type(v) in (int, float) for v in metrics.values()))
        and (pin is None or (type(pin) is dict and all(type(k) is str for k in pin)))
        and type(verified) is bool
        and (run_id is None or type(run_id) is str)
    )
    if not ok:
        raise ValueError("malformed cache entry")
    # Positional, in field order: keywords cost three times as much, in the loop of every scan.
    facts = CheckpointFacts(
        True,  # complete: only complete checkpoints are cached
        None,  # incomplete_reason
        tokens,
        milestone,
        config,
        size,
        files,
        mtime,
        tuple(warnings),
        None,  # scan_error
        metrics,
        None if pin is None else _pin(pin),
        True,  # size_known
        False,  # corrupt
        verified,
        run_id,
    )
    return CacheEntry(
        tuple(own),
        {rel: tuple(stamp) for rel, stamp in subdirs.items()} if subdirs else {},
        None if meta is None else tuple(meta),
        facts,
    )


def _pin(fields: dict[str, Any]) -> Pin:
    # Imported here: pins imports the catalog, which imports the scan cache.
    from kempnerforge.checkpoint.store.pins import Pin

    return Pin(
        **{k: v for k, v in fields.items() if k in _PIN_KEYS and type(v) in (str, type(None))}
    )


def _encode(entry: CacheEntry, ref: int | None) -> list[object]:
    f = entry.facts
    pin = None if f.pin is None else f.pin.to_dict()
    return [
        entry.step_dir,
        entry.subdirs,
        entry.metadata,
        f.tokens_seen,
        f.dynamic_milestone,
        ref,
        f.size_bytes,
        f.file_count,
        f.mtime_s,
        f.warnings,
        f.metrics,
        pin,
        f.run_id,
        f.verified,
    ]


def _document(entries: Mapping[str, CacheEntry]) -> dict[str, object]:
    """The cache file's JSON document; each distinct recorded config is stored once."""
    configs: list[dict[str, Any]] = []
    # Keyed by repr, which tells apart what == would not (1, 1.0 and true) at a third of the
    # cost of json.dumps (a table written in another key order is merely stored twice), and
    # by id for the checkpoints taken from the cache, which share one dict per config.
    index: dict[str, int] = {}
    by_id: dict[int, int] = {}
    encoded = {}
    for name, entry in entries.items():
        config = entry.facts.recorded_config
        ref = None
        if config is not None:
            ref = by_id.get(id(config))
            if ref is None:
                ref = by_id[id(config)] = index.setdefault(repr(config), len(configs))
                if ref == len(configs):
                    configs.append(config)
        encoded[name] = _encode(entry, ref)
    return {"format": _FORMAT, "version": _VERSION, "configs": configs, "entries": encoded}


def read_cache(root_fd: int) -> tuple[dict[str, object], list[object]]:
    """The undecoded entries and the configs table of the cache file of the root open as
    ``root_fd``; empty when missing, foreign, corrupt or unsafe."""
    empty: tuple[dict[str, object], list[object]] = ({}, [])
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


def write_cache(root_fd: int, entries: Mapping[str, CacheEntry]) -> None:
    """Replace the cache file with ``entries``; a failed write (read-only root, quota, a
    directory in the way) leaves no temp file and is otherwise ignored."""
    data = json.dumps(_document(entries), separators=(",", ":")).encode()
    tmp = temp_name(CACHE_NAME)
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o644, dir_fd=root_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        # rename replaces whatever is at CACHE_NAME (a symlink included) and follows nothing.
        os.replace(tmp, CACHE_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=root_fd)


def remove_stale_temps(root_fd: int, names: Iterable[str]) -> None:
    """Remove the cache temp files among ``names`` that a killed writer left (old enough)."""
    cutoff = time.time() - _STALE_TEMP_S
    for name in names:
        with contextlib.suppress(OSError):
            st = os.lstat(name, dir_fd=root_fd)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(name, dir_fd=root_fd)
