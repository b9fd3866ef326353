"""Verifiable completeness: a checkpoint is complete only if what its ``.metadata`` names is there.

The cheap rule (:func:`~kempnerforge.checkpoint.store.layout.check_complete`: DCP's ``.metadata``
marker is present, non-empty in a scan) says a save *finished*. It cannot tell a checkpoint that
was truncated by a full disk, copied in part, or hand-edited from a good one: a 0-byte or
truncated ``.metadata`` still "exists". :func:`verify_checkpoint` is the full check:

1. the cheap rule holds (every recorded pipeline stage has its marker);
2. every ``.metadata`` parses through the allowlist of :mod:`._manifest` (nothing in it runs);
3. every shard file it names exists, is a regular file, and holds at least the bytes recorded
   for it (offset + length of its last item).

A checkpoint that fails 2 or 3 is **corrupt**: it never counts as complete (not toward
``keep_last_n``, not as the newest complete one, not for resume or export), and retention never
deletes it (it may be evidence of what went wrong; a person removes it by hand).

Where it runs: ``kf-ckpt ls`` (every checkpoint; the verdict of a good one is kept in the scan
cache, valid while the stamps of its directories are), gc and the manager's retention round
before they delete anything (every complete checkpoint newer than the oldest victim, and the
complete victims themselves; gc reuses and records cached verdicts, the manager's light scan
checks on disk), resume, and the choice of a checkpoint to export or show.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kempnerforge.checkpoint.store.layout import DCP_METADATA, check_complete, pp_stage_dirs
from kempnerforge.checkpoint.store.recorded import recorded_pp_stages

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.records import Catalog

__all__ = ["Verification", "verify_catalog", "verify_checkpoint"]


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The full check of one checkpoint directory."""

    complete: bool
    """Verifiably complete: the manifest parses and every shard it names is there in full."""
    corrupt: bool = False
    """The marker is there but the checkpoint is not usable (see :attr:`reason`)."""
    reason: str | None = None
    """Why it is not complete (``no DCP .metadata``, ``shard __0_0.distcp is truncated ...``)."""


_OK = Verification(complete=True)


def verify_checkpoint(
    step_dir: Path, *, pp_stages: int | None = None, shards: bool = True
) -> Verification:
    """Check ``step_dir`` in full: the marker(s), the manifest(s), and every shard they name.

    ``pp_stages`` defaults to the count recorded in its metadata.json. ``shards=False`` checks
    the manifests only (one ``open`` per DCP tree, no listing when the stage count is recorded
    or the step directory holds the marker): the bounded check of the manager's retention round,
    which must not walk shard files. Never raises for what is on disk: an unreadable file is a
    reason, not an exception.
    """
    trees = None if shards else _trees_without_listing(step_dir, pp_stages)
    if trees is None:
        if pp_stages is None:
            pp_stages = recorded_pp_stages(step_dir)
        status = check_complete(step_dir, pp_stages=pp_stages)
        if not status.complete:
            return Verification(complete=False, reason=status.reason)
        trees = [(f"pp{k}/", path) for k, path in pp_stage_dirs(step_dir)] or [("", step_dir)]
    for where, tree in trees:
        problem = _verify_tree(tree, where, shards=shards)
        if problem is not None:
            complete_marker = problem != _NO_MARKER
            reason = problem if complete_marker else f"no DCP {DCP_METADATA} in {where or './'}"
            return Verification(complete=False, corrupt=complete_marker, reason=reason)
    return _OK


_NO_MARKER = "no marker"


def _trees_without_listing(step_dir: Path, pp_stages: int | None) -> list[tuple[str, Path]] | None:
    """The DCP trees of a checkpoint when known without listing it, else None."""
    if (step_dir / DCP_METADATA).is_file():
        return [("", step_dir)]
    if pp_stages is None:
        pp_stages = recorded_pp_stages(step_dir)
    if pp_stages:
        return [(f"pp{k}/", step_dir / f"pp{k}") for k in range(pp_stages)]
    return None


def _verify_tree(tree: Path, where: str, *, shards: bool = True) -> str | None:
    """Why the DCP tree ``tree`` is corrupt, or None when it is whole."""
    # Imported here (pickle and the allowlist): a scan served by the cache checks nothing.
    from kempnerforge.checkpoint.store._manifest import ManifestError, read_manifest

    try:
        manifest = read_manifest(tree / DCP_METADATA)
    except ManifestError as exc:
        if str(exc) == "missing":
            return _NO_MARKER
        return f"DCP {where}{DCP_METADATA} is unusable: {exc}"
    if not shards:
        return None
    for name, needed in sorted(manifest.files.items()):
        try:
            st = os.lstat(tree / name)
        except FileNotFoundError:
            return f"shard {where}{name} named by {DCP_METADATA} is missing"
        except OSError as exc:
            return f"cannot check shard {where}{name}: {exc.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"shard {where}{name} is not a regular file"
        if st.st_size < needed:
            return f"shard {where}{name} is truncated: {st.st_size} of {needed} bytes"
    return None


def verify_catalog(catalog: Catalog, steps: Iterable[int], *, shards: bool = True) -> Catalog:
    """``catalog`` with the checkpoints of ``steps`` checked in full, on disk.

    A checkpoint that passes is marked ``verified``; one that fails is no longer ``complete``
    (``corrupt`` when its marker is there, with the reason). Steps that are not in the catalog,
    or not complete by the cheap rule, are left as they are. ``shards=False``: the manifests
    only (see :func:`verify_checkpoint`); a pass then does not mark the checkpoint verified.
    """
    wanted = set(steps)
    if not wanted:
        return catalog
    checkpoints = []
    for info in catalog.checkpoints:
        if info.step in wanted and info.complete:
            verdict = verify_checkpoint(info.path, shards=shards)
            info = dataclasses.replace(
                info,
                complete=verdict.complete,
                corrupt=verdict.corrupt,
                incomplete_reason=verdict.reason,
                verified=verdict.complete and shards,
            )
        checkpoints.append(info)
    return dataclasses.replace(catalog, checkpoints=tuple(checkpoints))
