"""The manager's file-system side, around the DCP data (torch-free).

Before a save, rank 0 prepares the step directory and writes ``metadata.json``; after it, rank 0
publishes the save (``latest``, then retention through
:mod:`kempnerforge.checkpoint.store.collect`). On
resume, :func:`resolve_resume_dir` picks the checkpoint to load.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.files import (
    fsync_dir,
    read_latest,
    unique_suffix,
    update_latest,
    write_json_atomic,
)
from kempnerforge.checkpoint.store.layout import (
    METADATA_JSON,
    TRASH_NAME,
    check_complete,
    list_step_dirs,
    parse_step,
    pp_stage_dirs,
    read_metadata_json,
    step_dir_name,
)
from kempnerforge.checkpoint.store.selection import newest_complete, resolve_checkpoint
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import config_to_dict
from kempnerforge.errors import (
    CheckpointNotFoundError,
    CheckpointSaveError,
    CorruptCheckpointError,
    KempnerForgeError,
    LockBusyError,
    RetentionError,
)

__all__ = [
    "FORMAT_VERSION",
    "point_latest",
    "prepare_step_dir",
    "publish",
    "resolve_resume_dir",
    "run_retention",
    "saved_step",
    "write_metadata",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_REPLACE_LOCK_WAIT_S = 30.0  # only when a save must move an old directory of its step aside


def prepare_step_dir(root: Path, step_dir: Path) -> None:
    """Make ``step_dir`` a fresh, empty directory for a save to write into.

    A leftover of an interrupted save, or an older save of the same step, whose ``.metadata``
    would make the half-written new save look complete, is renamed into the trash, which the
    retention round that ends this save empties. The rename happens under the root's lock, so
    that a concurrent ``kf-ckpt gc`` that planned to delete the old directory cannot delete the
    new one in its place.

    Raises:
        CheckpointSaveError: ``step_dir`` is a file or a symlink, gc holds the lock too long,
            or the old directory cannot be moved aside (``.kf-trash`` is a symlink or a file).
    """
    from kempnerforge.checkpoint.store.collect import hold_lock

    if step_dir.is_symlink() or (step_dir.exists() and not step_dir.is_dir()):
        raise CheckpointSaveError(
            f"{step_dir} exists and is not a checkpoint directory; move it out of {root}"
        )
    if not step_dir.exists():
        step_dir.mkdir(parents=True)
        return
    logger.warning("%s already exists; replacing it", step_dir)
    try:
        with hold_lock(root, wait_lock_s=_REPLACE_LOCK_WAIT_S):
            _move_aside(root, step_dir)
            step_dir.mkdir()
    except LockBusyError as exc:
        raise CheckpointSaveError(
            f"cannot replace the existing {step_dir}: {exc}; retry once that gc is done"
        ) from exc


def _move_aside(root: Path, step_dir: Path) -> None:
    """Rename ``step_dir`` into the root's trash, through descriptors: no symlink is followed.

    A ``.kf-trash`` that is a symlink (out of the root, say) or a file is refused, as gc
    refuses it, and ``step_dir`` stays where it is.
    """
    from kempnerforge.checkpoint.store._trash import move_to_trash, open_trash

    trash_name = f"{step_dir.name}.replaced.{unique_suffix()}"
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        with contextlib.ExitStack() as fds:
            root_fd = os.open(root, flags)
            fds.callback(os.close, root_fd)
            parent_fd = os.open(step_dir.parent, flags)
            fds.callback(os.close, parent_fd)
            trash_fd = open_trash(root_fd, create=True)
            if trash_fd is None:
                raise RetentionError(f"{TRASH_NAME} vanished right after it was created")
            fds.callback(os.close, trash_fd)
            move_to_trash(parent_fd, step_dir.name, trash_fd, trash_name)
            with contextlib.suppress(OSError):
                os.fsync(root_fd)
    except (OSError, RetentionError) as exc:
        raise CheckpointSaveError(
            f"cannot move the existing {step_dir} aside into {root / TRASH_NAME}: {exc}; "
            "move or remove it by hand"
        ) from exc


def write_metadata(
    step_dir: Path,
    *,
    step: int,
    tokens_seen: int,
    config: CheckpointConfig,
    world_size: int,
    pp_stages: int | None,
    metrics: dict[str, float | int | None] | None = None,
) -> None:
    """Publish ``metadata.json``: what ``kf-ckpt`` and retention read without torch.

    ``metrics`` are recorded as given: check them first with
    :func:`kempnerforge.checkpoint.store.metrics.checked_metrics`.
    """
    metadata: dict[str, Any] = {
        "step": step,
        "tokens_seen": tokens_seen,
        "dynamic_milestone": config.is_dynamic_milestone(step),
        "checkpoint": config_to_dict(config),
        "world_size": world_size,
        "format_version": FORMAT_VERSION,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": dict(metrics or {}),
    }
    if pp_stages is not None:
        metadata["pp_stages"] = pp_stages
    write_json_atomic(step_dir / METADATA_JSON, metadata)


def publish(root: Path, step: int, config: CheckpointConfig, *, pp_stages: int | None) -> None:
    """Point ``latest`` at a finished save once it is durable, then run a retention round.

    Raises:
        CheckpointSaveError: the save is not complete on disk; ``latest`` is left alone.
    """
    point_latest(root, step, pp_stages=pp_stages)
    run_retention(root, config)


def point_latest(root: Path, step: int, *, pp_stages: int | None) -> None:
    """Make the save of ``step`` durable (fsync its directories) and point ``latest`` at it.

    Raises:
        CheckpointSaveError: the save is not complete on disk; ``latest`` is left alone.
    """
    step_dir = root / step_dir_name(step)
    for _, stage_dir in pp_stage_dirs(step_dir):
        fsync_dir(stage_dir)
    fsync_dir(step_dir)
    status = check_complete(step_dir, pp_stages=pp_stages)
    if not status.complete:
        raise CheckpointSaveError(f"{step_dir} is incomplete ({status.reason}); latest not moved")
    update_latest(root, step)
    logger.info("saved checkpoint %s", step_dir)


def run_retention(root: Path, config: CheckpointConfig) -> None:
    """One retention round through :func:`kempnerforge.checkpoint.store.collect.collect_garbage`.

    Retention never blocks or fails the run: when ``kf-ckpt gc`` holds the lock the round is
    skipped (the next save retries), and a failed deletion is logged.
    """
    from kempnerforge.checkpoint.store.collect import collect_garbage

    try:
        collect_garbage(root, config, wait_lock_s=0.0)
    except LockBusyError as exc:
        logger.warning("retention skipped this round (another process holds the lock): %s", exc)
    except (OSError, KempnerForgeError, RecursionError, ValueError) as exc:
        # Whatever is on disk (a hostile metadata.json, a full disk), training goes on.
        logger.error("retention failed under %s: %s; run 'kf-ckpt gc'", root, exc)


def resolve_resume_dir(
    root: Path, path: str | Path | None = None, load_path: str | None = None
) -> Path | None:
    """The checkpoint a resume loads: ``path``, else ``load_path``, else ``<root>/latest``.

    ``path`` / ``load_path`` may name any directory holding a DCP checkpoint, whatever its name
    and whoever wrote it. Every candidate gets the full check (its ``.metadata`` parsed through
    the allowlist, every shard it names present in full). When ``latest`` is missing, outside
    the root or names an incomplete or corrupt checkpoint, the newest verifiably complete one
    is used instead, with a logged warning (corrupt ones passed over are named too). None -- a
    fresh start from step 0 -- only for a root that holds no checkpoint directory at all.

    Raises:
        CheckpointNotFoundError: ``path`` / ``load_path`` is given but does not exist (a wrong
            path must never turn into a silent restart from step 0).
        CorruptCheckpointError: the explicitly named checkpoint is incomplete or corrupt, or
            checkpoint directories exist (or ``latest`` names one) but none is complete.
    """
    explicit = path if path is not None else load_path
    if explicit is not None:
        if not Path(explicit).exists():
            where = "the path passed to load()" if path is not None else "checkpoint.load_path"
            raise CheckpointNotFoundError(
                f"checkpoint {explicit} (from {where}) does not exist; fix it, or unset it to "
                f"resume from {root / 'latest'}"
            )
        return resolve_checkpoint(explicit)
    if not root.is_dir():
        return None
    link = read_latest(root)
    if link.warning:
        logger.warning("%s: %s", root, link.warning)
    if link.step is not None:
        linked = root / step_dir_name(link.step)
        verdict = verify_checkpoint(linked)
        if verdict.complete:
            return linked
    passed_over: list[str] = []
    fallback = newest_complete(root, skipped=passed_over)
    for line in passed_over:
        logger.warning("%s: %s; not resumed from (remove it by hand once inspected)", root, line)
    if link.step is not None:
        logger.warning(
            "%s: latest -> %s is %s (%s); falling back to %s",
            root,
            linked.name,
            "corrupt" if verdict.corrupt else "incomplete",
            verdict.reason,
            fallback.name if fallback else "no checkpoint (starting from step 0)",
        )
    elif fallback is not None:
        logger.warning("%s: no usable 'latest'; resuming from %s", root, fallback.name)
    if fallback is None and (link.step is not None or list_step_dirs(root)):
        raise CorruptCheckpointError(_no_complete_checkpoint(root, link.step))
    return fallback


def _no_complete_checkpoint(root: Path, latest_step: int | None) -> str:
    """Why a root with checkpoint directories, none complete, is not a fresh start."""
    found = []
    for _, step_dir in reversed(list_step_dirs(root)):
        verdict = verify_checkpoint(step_dir)
        state = "corrupt" if verdict.corrupt else "incomplete"
        found.append(f"{step_dir.name} ({state}: {verdict.reason})")
    shown = ", ".join(found[:5]) + (f", and {len(found) - 5} more" if len(found) > 5 else "")
    latest = f"; latest -> {step_dir_name(latest_step)}" if latest_step is not None else ""
    return (
        f"no complete checkpoint to resume from under {root}: found {shown or 'nothing'}"
        f"{latest}. Refusing to start from step 0 silently. To resume, restore a complete "
        f"checkpoint or set checkpoint.load_path; to start from step 0 on purpose, point "
        f"checkpoint.dir at a new directory or move these directories out of {root}"
    )


def saved_step(step_dir: Path) -> int:
    """The step of a checkpoint: from its ``metadata.json``, else from its directory name."""
    step = (read_metadata_json(step_dir).data or {}).get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    return parse_step(step_dir.name) or 0
