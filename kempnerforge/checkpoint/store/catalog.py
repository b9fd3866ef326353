"""Scan a checkpoint root: which checkpoints are on disk, how complete and how big (torch-free).

A scan never crashes on one bad entry: anything that is not a checkpoint is listed as skipped
with the reason, and a checkpoint whose files cannot all be read carries warnings. Nothing is
followed through a symlink, and nothing is modified except the scan cache
(:mod:`kempnerforge.checkpoint.store._scan_cache`, ``<root>/.kf-ckpt.cache``): a complete checkpoint
never changes, so it is walked once and then recognised by the stamps of its directories.

Sizes are apparent sizes (``st_size`` of every entry, the step directory included, hard links
counted once): the figure ``du -sb`` prints. ``st_blocks * 512`` would be more exact for sparse
files, but DCP shards are dense and ``du -sb`` is what people check the numbers against.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Collection
from pathlib import Path

from kempnerforge.checkpoint.store._cache_file import is_cache_entry
from kempnerforge.checkpoint.store._pending import PendingDir, scan_pending
from kempnerforge.checkpoint.store._scan_cache import ScanCache
from kempnerforge.checkpoint.store.files import LatestLink, parse_temp_name, read_latest
from kempnerforge.checkpoint.store.layout import (
    CACHE_NAME,
    LATEST_NAME,
    LOCK_NAME,
    OWNER_NAME,
    POLICY_NAME,
    PUBLISH_LOCK_NAME,
    READERS_NAME,
    TRASH_NAME,
    holds_dcp_checkpoint,
    parse_pending,
    parse_step,
)
from kempnerforge.checkpoint.store.lease import file_system_now
from kempnerforge.checkpoint.store.owner import read_owner
from kempnerforge.checkpoint.store.paths import is_checkpoint_dir
from kempnerforge.checkpoint.store.records import (
    Catalog,
    CheckpointFacts,
    CheckpointInfo,
    SkippedEntry,
)
from kempnerforge.errors import CheckpointRootError

__all__ = ["PendingDir", "check_root", "scan"]


def check_root(root: str | Path) -> Path:
    """``root`` as a Path, after checking it is an existing directory.

    Raises:
        CheckpointRootError: ``root`` is missing, not a directory, cannot be read, or is one
            checkpoint (a ``step_<N>`` directory) rather than a root.
    """
    path = Path(root)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointRootError(
            f"checkpoint root {path} does not exist; check checkpoint.dir or the DIR argument"
        ) from None
    except OSError as exc:
        raise CheckpointRootError(f"cannot access checkpoint root {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise CheckpointRootError(
            f"checkpoint root {path} is not a directory; pass the directory holding step_<N>/"
        )
    if parse_step(path.name) is not None and is_checkpoint_dir(path):
        raise CheckpointRootError(
            f"{path} is a checkpoint (step {parse_step(path.name)}), not a checkpoint root: "
            f"pass its root {path.parent}, or see what it holds with 'kf-ckpt show {path}'"
        )
    return path


def scan(
    root: str | Path, *, use_cache: bool = True, verify: bool | Collection[int] = False
) -> Catalog:
    """List the checkpoints under ``root`` with completeness, metadata, size and file count.

    One walk per checkpoint that lists each directory once, stats every entry once and
    descends only into real directories, never through a symlink; ``metadata.json`` is read
    once. A checkpoint removed while the scan runs (by a concurrent gc) is left out.

    With ``use_cache`` (the default), a complete checkpoint that the scan cache recorded and
    that provably has not changed since (the stamps of its directories and of metadata.json
    match) is not walked again: a couple of ``lstat`` calls instead of one per file. The cache
    is then updated when something changed; a root that cannot be written is scanned all the
    same. ``use_cache=False`` neither reads nor writes it.

    With ``verify`` (True, or the steps to check), every checkpoint that looks complete also
    gets the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint` (its manifest parsed, its
    shards stat'ed); a pass is remembered in the scan cache, so the next scan with ``verify``
    re-checks only what changed. Without it, only the markers are checked.

    Raises:
        CheckpointRootError: ``root`` is missing, not a directory, or cannot be read.

    Example:
        >>> catalog = scan("runs/a/checkpoints")  # doctest: +SKIP
        >>> [(c.step, c.complete, c.size_bytes) for c in catalog.checkpoints]  # doctest: +SKIP
        [(500, True, 1900000000), (1000, False, 230000000)]
    """
    path = check_root(root)
    scanned_at_s = time.time()
    latest = read_latest(path)
    checkpoints: list[CheckpointInfo] = []
    skipped: list[SkippedEntry] = []
    trash_entries = 0
    pending_names: list[str] = []
    try:
        root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with os.scandir(root_fd) as it:
            entries = list(it)
    except OSError as exc:
        raise CheckpointRootError(f"cannot read checkpoint root {path}: {exc.strerror}") from exc
    try:
        cache = ScanCache(root_fd, enabled=use_cache)
        latest_step = latest.step
        for entry in entries:
            name = entry.name
            step = parse_step(name)
            if step is not None and entry.is_dir(follow_symlinks=False):
                facts = cache.lookup(entry)
                if facts is None:
                    facts = _walked(root_fd, name, step, cache, scanned_at_s)
                    if facts is None:
                        continue  # removed meanwhile (a concurrent gc)
                step_dir = path / name
                if (
                    verify
                    and facts.complete
                    and not facts.verified
                    and (verify is True or step in verify)
                ):
                    facts = _verified(facts, step_dir, cache)
                info = facts.to_info(step=step, path=step_dir, is_latest=step == latest_step)
                checkpoints.append(info)
                continue
            if (
                name.startswith(".kf-")
                and parse_pending(name)
                and entry.is_dir(follow_symlinks=False)
            ):
                pending_names.append(name)
                continue
            if is_cache_entry(entry.name):
                if entry.name != CACHE_NAME:
                    cache.note_temp(entry.name)
                continue  # the toolkit's own; never reported
            if entry.name == TRASH_NAME and entry.is_dir(follow_symlinks=False):
                trash_entries = _count_entries(path / TRASH_NAME)
            skipped.append(_skipped(entry, path, step, latest, trash_entries))
        cache.save()
        clock_s = None
        if pending_names or any(not c.complete for c in checkpoints):
            clock_s = file_system_now(path)
        now_s = scanned_at_s if clock_s is None else clock_s
        pending = scan_pending(path, root_fd, pending_names, now_s)
    finally:
        os.close(root_fd)
    warnings = [latest.warning] if latest.warning else []
    if trash_entries:
        warnings.append(_trash_warning(path, trash_entries))
    checkpoints.sort(key=lambda c: c.step)
    skipped.sort(key=lambda s: s.name)
    return Catalog(
        root=path,
        checkpoints=tuple(checkpoints),
        skipped=tuple(skipped),
        latest=latest,
        warnings=tuple(warnings),
        trash_entries=trash_entries,
        scanned_at_s=scanned_at_s,
        pending=tuple(pending),
        owner=read_owner(path),
        clock_s=clock_s,
        cache_hits=cache.hits,
    )


def _trash_warning(root: Path, entries: int) -> str:
    from kempnerforge.checkpoint.store._lock import lock_is_held

    if lock_is_held(root):
        return f"{entries} entries in {TRASH_NAME}, being removed by the gc that holds the lock"
    return f"{entries} entries in {TRASH_NAME} left by an interrupted gc; the next gc removes them"


def _skipped(
    entry: os.DirEntry[str], root: Path, step: int | None, latest: LatestLink, trash_entries: int
) -> SkippedEntry:
    name = entry.name
    toolkit = True
    if name == LATEST_NAME:
        reason = latest.warning or f"the latest link -> {latest.target}"
    elif name == LOCK_NAME:
        reason = "the gc lock file"
    elif parse_temp_name(name) is not None:
        reason = "a file being published (written under a temp name, then renamed into place)"
    elif name == POLICY_NAME:
        reason = "the retention policy recorded by kf-ckpt mark"
    elif name == READERS_NAME:
        reason = "the read-lease file of export and show"
    elif name == PUBLISH_LOCK_NAME:
        reason = "the publish lock file"
    elif name == OWNER_NAME:
        reason = "the record of the job that owns this root"
    elif name == TRASH_NAME:
        real = entry.is_dir(follow_symlinks=False)
        reason = (
            f"the gc trash ({trash_entries} entries left to remove)"
            if real
            else "named like the gc trash but not a real directory; gc refuses to use it"
        )
    else:
        toolkit = False
        if step is None and entry.is_dir(follow_symlinks=False):
            if holds_dcp_checkpoint(root / name):
                reason = (
                    "a DCP checkpoint not named step_<N> (another tool's, or a renamed copy): "
                    "not managed here, but it can be exported and shown"
                )
                return SkippedEntry(name=name, path=root / name, reason=reason, dcp_checkpoint=True)
            reason = "not a step_<N> name"
        elif step is None:
            reason = "not a step_<N> name"
        elif entry.is_symlink():
            reason = "a symlink named like a checkpoint; never followed"
        else:
            reason = "named like a checkpoint but not a directory"
    return SkippedEntry(name=name, path=root / name, reason=reason, toolkit_entry=toolkit)


def _count_entries(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def _verified(facts: CheckpointFacts, step_dir: Path, cache: ScanCache) -> CheckpointFacts:
    """The full check of a checkpoint that looks complete; a pass is remembered in the cache."""
    from kempnerforge.checkpoint.store.verify import verify_checkpoint

    verdict = verify_checkpoint(step_dir)
    if verdict.complete:
        cache.mark_verified(step_dir.name)
        return facts._replace(verified=True)
    cache.forget(step_dir.name)
    return facts._replace(complete=False, corrupt=verdict.corrupt, incomplete_reason=verdict.reason)


def _walked(
    root_fd: int, name: str, step: int, cache: ScanCache, scanned_at_s: float
) -> CheckpointFacts | None:
    """What a walk of step directory ``name`` finds; None when it vanished meanwhile."""
    # Imported here: a scan served by the cache (the usual ``kf-ckpt ls``) never walks.
    from kempnerforge.checkpoint.store._facts import checkpoint_facts
    from kempnerforge.checkpoint.store._walk import walk_step_dir

    walk = walk_step_dir(root_fd, name)
    if walk.vanished:
        return None
    facts = checkpoint_facts(root_fd, name, step, walk)
    cache.remember(name, walk, facts, scanned_at_s=scanned_at_s)
    return facts
