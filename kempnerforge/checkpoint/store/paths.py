"""What a path given by a user is: a checkpoint, a checkpoint root, or a place we must not write.

Commands that take a root refuse a checkpoint directory (with a hint); export refuses an output
path among a root's managed entries (a step directory, a new ``step_N`` path, the trash, the
lock, the cache, the lease files). Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from kempnerforge.checkpoint.store.layout import (
    CACHE_NAME,
    DCP_METADATA,
    LATEST_NAME,
    LOCK_NAME,
    METADATA_JSON,
    POLICY_NAME,
    READERS_NAME,
    TRASH_NAME,
    parse_pp_stage,
    parse_step,
)

__all__ = ["is_checkpoint_dir", "is_checkpoint_root", "managed_path_reason"]


def is_checkpoint_dir(path: Path) -> bool:
    """Is ``path`` one checkpoint (a DCP tree), rather than a root that holds checkpoints?

    True when it holds DCP's ``.metadata``, a ``metadata.json`` or ``pp<k>/`` stages, and no
    ``step_<N>`` directory of its own (a root may itself be named like a step).
    """
    try:
        with os.scandir(path) as it:
            names = {entry.name: entry for entry in it}
    except OSError:
        return False
    if any(
        parse_step(name) is not None and entry.is_dir(follow_symlinks=False)
        for name, entry in names.items()
    ):
        return False
    return (
        DCP_METADATA in names
        or METADATA_JSON in names
        or any(parse_pp_stage(name) is not None for name in names)
    )


def is_checkpoint_root(path: Path) -> bool:
    """Does ``path`` look like a checkpoint root (the toolkit's entries, or checkpoints in it)?"""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError:
        return False
    names = {entry.name for entry in entries}
    if names & {LOCK_NAME, TRASH_NAME, CACHE_NAME, LATEST_NAME, READERS_NAME, POLICY_NAME}:
        return True
    return any(
        parse_step(entry.name) is not None
        and entry.is_dir(follow_symlinks=False)
        and is_checkpoint_dir(Path(entry.path))
        for entry in entries
    )


def managed_path_reason(path: Path) -> str | None:
    """Why nothing but the toolkit may write at ``path``, or None when it may be written.

    ``path`` (which need not exist) is refused when it or a directory above it is an entry that
    a checkpoint root manages: a ``step_<N>`` directory (a checkpoint, or what would look like a
    new one), the trash, the lock, the scan cache or ``latest`` -- gc deletes or rewrites those
    -- or a checkpoint directory anywhere (a DCP tree with its ``.metadata``).
    """
    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, *absolute.parents):
        real = Path(os.path.realpath(candidate)) if os.path.lexists(candidate) else candidate
        for current in {candidate, real}:
            name, parent = current.name, current.parent
            managed = parse_step(name) is not None or name in {
                TRASH_NAME, LOCK_NAME, CACHE_NAME, LATEST_NAME, READERS_NAME, POLICY_NAME
            }  # fmt: skip
            if managed and is_checkpoint_root(parent):
                return f"{current} is {_what(name)} of the checkpoint root {parent}"
            if os.path.isdir(current) and (current / DCP_METADATA).exists():
                return f"{current} is a checkpoint (it holds DCP {DCP_METADATA})"
    return None


def _what(name: str) -> str:
    if parse_step(name) is not None:
        return f"the checkpoint directory {name} (or would look like one)"
    return {
        TRASH_NAME: "the gc trash (emptied by every gc)",
        LOCK_NAME: "the lock file",
        READERS_NAME: "the read-lease file",
        POLICY_NAME: "the retention policy file",
        CACHE_NAME: "the scan cache",
        LATEST_NAME: "the latest link",
    }[name]
