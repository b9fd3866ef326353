"""The light scan of a checkpoint root: what a retention decision needs, O(checkpoints) calls.

:func:`~kempnerforge.checkpoint.store.catalog.scan` walks every file of a checkpoint its cache
does not cover (always the one just written), for sizes. On a parallel file system each of those
``lstat`` calls is a round trip to a metadata server, and a many-rank checkpoint has tens of
thousands of files: far too slow for the training thread, which runs a retention round after
every save. Retention needs much less: the step, complete or not, the milestone flag recorded in
metadata.json, the pin, ``latest``, and, for an incomplete directory only, how recently it was
written.

:func:`scan_light` learns that with a fixed number of calls per checkpoint: the scan cache's
stamps when the cache covers it (then sizes are known too), else one read of metadata.json, one
``lstat`` of the completeness marker (one per recorded pipeline stage) and one attempt to open
the pin file. Only an incomplete
directory, which is rare, or a pipeline checkpoint whose stage count was not recorded is walked
in full, as ``scan`` walks it. The shard files of a complete checkpoint are never listed, so its
size stays unknown (:attr:`CheckpointInfo.size_known` is False, ``size_bytes`` 0) until a full
scan (``kf-ckpt ls`` or ``gc``) records it in the cache.

The light scan neither writes the scan cache nor lists the root's other entries: the catalog it
returns has no skipped entries and no trash count. It does list the saves not yet published
(their lease, marker and own mtime, never their shards), the owner record and, when something
is incomplete or pending, the file system's clock: what retention needs for them. Nothing is
followed through a symlink.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from kempnerforge.checkpoint.store._facts import checkpoint_facts
from kempnerforge.checkpoint.store._pending import scan_pending
from kempnerforge.checkpoint.store._scan_cache import ScanCache
from kempnerforge.checkpoint.store._walk import StepWalk, walk_step_dir
from kempnerforge.checkpoint.store.catalog import check_root
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    assess_complete,
    parse_pending,
    parse_step,
)
from kempnerforge.checkpoint.store.lease import file_system_now
from kempnerforge.checkpoint.store.owner import read_owner
from kempnerforge.checkpoint.store.recorded import pp_stages_of, read_metadata_json
from kempnerforge.checkpoint.store.records import Catalog, CheckpointFacts, CheckpointInfo
from kempnerforge.errors import CheckpointRootError

__all__ = ["probe_complete", "scan_light"]


def scan_light(root: str | Path, *, use_cache: bool = True) -> Catalog:
    """List the checkpoints under ``root`` with what retention needs, without walking them.

    The result plans exactly as a full scan's does (:func:`plan_retention` reads step,
    completeness, the milestone flag, ``latest`` and the newest mtime of incomplete
    directories); only sizes may be unknown.

    Raises:
        CheckpointRootError: ``root`` is missing, not a directory, or cannot be read.

    Example:
        >>> catalog = scan_light("runs/a/checkpoints")  # doctest: +SKIP
        >>> [(c.step, c.complete, c.size_known) for c in catalog.checkpoints]  # doctest: +SKIP
        [(500, True, True), (1000, True, False)]
    """
    path = check_root(root)
    scanned_at_s = time.time()
    latest = read_latest(path)
    checkpoints: list[CheckpointInfo] = []
    try:
        root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with os.scandir(root_fd) as it:
            listed = list(it)
        entries = [e for e in listed if parse_step(e.name) is not None]
        pending_names = [
            e.name
            for e in listed
            if e.name.startswith(".kf-")
            and parse_pending(e.name)
            and e.is_dir(follow_symlinks=False)
        ]
    except OSError as exc:
        raise CheckpointRootError(f"cannot read checkpoint root {path}: {exc.strerror}") from exc
    try:
        cache = ScanCache(root_fd, enabled=use_cache)  # read only: a light scan never saves it
        for entry in entries:
            step = parse_step(entry.name)
            if step is None or not entry.is_dir(follow_symlinks=False):
                continue
            facts = cache.lookup(entry) or _probed(root_fd, entry.name, step)
            if facts is None:
                continue  # removed meanwhile (a concurrent gc)
            info = facts.to_info(step=step, path=path / entry.name, is_latest=step == latest.step)
            checkpoints.append(info)
        clock_s = None
        if pending_names or any(not c.complete for c in checkpoints):
            clock_s = file_system_now(path)
        now_s = scanned_at_s if clock_s is None else clock_s
        pending = scan_pending(path, root_fd, pending_names, now_s, walk=False)
    finally:
        os.close(root_fd)
    checkpoints.sort(key=lambda c: c.step)
    return Catalog(
        root=path,
        checkpoints=tuple(checkpoints),
        skipped=(),
        latest=latest,
        warnings=(latest.warning,) if latest.warning else (),
        scanned_at_s=scanned_at_s,
        pending=tuple(pending),
        owner=read_owner(path),
        clock_s=clock_s,
        cache_hits=cache.hits,
    )


def probe_complete(root_fd: int, name: str) -> bool:
    """Is step directory ``name`` of the root open as ``root_fd`` complete? A few calls, no walk.

    The same verdict as :func:`~kempnerforge.checkpoint.store.layout.check_complete` for the
    checkpoints the manager writes (the stage count is recorded in metadata.json); a pipeline
    checkpoint without a recorded count is listed (names only) to find its stages.
    """
    meta = read_metadata_json(name, dir_fd=root_fd)
    stages = _recorded_stages(root_fd, name, pp_stages_of(meta.data))
    if stages is None:
        walk = walk_step_dir(root_fd, name)
        return not walk.vanished and checkpoint_facts(root_fd, name, 0, walk).complete
    has_marker, found, empty = stages
    verdict = assess_complete(
        has_dcp_metadata=has_marker, stages=found, pp_stages=pp_stages_of(meta.data)
    )
    return verdict.complete and not empty


def _probed(root_fd: int, name: str, step: int) -> CheckpointFacts | None:
    """What a probe tells of step directory ``name``; a full walk when it is not complete."""
    try:
        own = os.lstat(name, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    meta = read_metadata_json(name, dir_fd=root_fd)
    pp_stages = pp_stages_of(meta.data)
    stages = _recorded_stages(root_fd, name, pp_stages)
    if stages is not None:
        has_marker, found, empty = stages
        verdict = assess_complete(has_dcp_metadata=has_marker, stages=found, pp_stages=pp_stages)
        if verdict.complete:
            probe = StepWalk(
                mtime_s=own.st_mtime,
                has_dcp_metadata=has_marker,
                stages=dict(found),
                has_pin=True,  # not listed: checkpoint_facts tries to open the pin file
                empty_markers=empty,  # a 0-byte .metadata: corrupt, as the walk finds it
            )
            return checkpoint_facts(root_fd, name, step, probe, meta=meta, size_known=False)
    # Incomplete (the grace rule needs its newest mtime) or stages not recorded: walk it.
    walk = walk_step_dir(root_fd, name)
    if walk.vanished:
        return None
    return checkpoint_facts(root_fd, name, step, walk, meta=meta)


def _recorded_stages(
    root_fd: int, name: str, pp_stages: int | None
) -> tuple[bool, dict[int, bool], list[str]] | None:
    """(step directory holds the marker, {stage: holds the marker}, where a marker is empty)
    from direct probes; the last as the walk records it (``./``, ``pp0/``).

    None when only a listing can tell: no marker in the step directory and no recorded stage
    count (an incomplete save, or a pipeline checkpoint written by another tool).
    """
    empty: list[str] = []
    if pp_stages:
        found = {}
        for k in range(pp_stages):
            stage = f"{name}/pp{k}"
            marker = _marker(root_fd, stage) if _is_real_dir(root_fd, stage) else None
            found[k] = marker is not None
            if marker == 0:
                empty.append(f"pp{k}/")
        return False, found, empty
    marker = _marker(root_fd, name)
    if marker is None:
        return None
    return True, {}, ["./"] if marker == 0 else []


def _is_real_dir(root_fd: int, rel: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(rel, dir_fd=root_fd).st_mode)
    except OSError:
        return False


def _marker(root_fd: int, rel_dir: str) -> int | None:
    """The size of DCP's ``.metadata`` in ``rel_dir`` (-1 for a symlink to a regular file, as
    the walk counts it); None when there is no such marker."""
    marker = f"{rel_dir}/{DCP_METADATA}"
    try:
        st = os.lstat(marker, dir_fd=root_fd)
        if stat.S_ISLNK(st.st_mode):
            return -1 if stat.S_ISREG(os.stat(marker, dir_fd=root_fd).st_mode) else None
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
