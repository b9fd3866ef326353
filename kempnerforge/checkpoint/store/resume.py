"""Which checkpoint a resume loads (torch-free): the first step of the manager's ``load()``.

``load(path)``, then ``checkpoint.load_path``, then ``<root>/latest``. When ``latest`` cannot be
used (missing, outside the root, incomplete) the newest complete checkpoint *of the current
lineage* is used instead (see :mod:`.lineage`): never one of a branch the owning run rolled back
from. And when the owning run published a save newer than ``latest`` (it was killed between the
rename into ``step_<N>`` and moving ``latest``), that save is resumed from: it is the newest
complete checkpoint of its lineage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import list_step_dirs, parse_step, step_dir_name
from kempnerforge.checkpoint.store.lineage import newest_on_lineage, published_after
from kempnerforge.checkpoint.store.owner import read_owner
from kempnerforge.checkpoint.store.recorded import json_int, read_metadata_json
from kempnerforge.checkpoint.store.resolve import resolve_checkpoint
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = ["resolve_resume_dir", "saved_step"]

logger = logging.getLogger(__name__)


def resolve_resume_dir(
    root: Path, path: str | Path | None = None, load_path: str | None = None
) -> Path | None:
    """The checkpoint a resume loads: ``path``, else ``load_path``, else ``<root>/latest``.

    ``path`` / ``load_path`` may name any directory holding a DCP checkpoint, whatever its name
    and whoever wrote it. When ``latest`` is missing, outside the root or names an incomplete
    checkpoint, the newest complete checkpoint of the current lineage is used instead, with a
    logged warning. None -- a fresh start from step 0 -- only for a root that holds no checkpoint
    directory at all (saves never published do not count).

    Raises:
        CheckpointNotFoundError: ``path`` / ``load_path`` is given but does not exist (a wrong
            path must never turn into a silent restart from step 0).
        CorruptCheckpointError: the explicitly named checkpoint is incomplete, or checkpoint
            directories exist (or ``latest`` names one) but none is complete.
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
    owner = read_owner(root)
    verdict = None
    if link.step is not None:
        linked = root / step_dir_name(link.step)
        verdict = verify_checkpoint(linked)
        if verdict.complete:
            newer = published_after(root, link.step, owner)
            if newer is not None:
                logger.warning(
                    "%s: %s is complete and newer than latest -> %s (the run was stopped "
                    "between publishing it and moving latest); resuming from %s",
                    root,
                    newer.name,
                    linked.name,
                    newer.name,
                )
                return newer
            return linked
    passed_over: list[str] = []
    fallback = newest_on_lineage(root, owner, skipped=passed_over)
    for line in passed_over:
        logger.warning("%s: %s; not resumed from (remove it by hand once inspected)", root, line)
    if link.step is not None and verdict is not None:
        logger.warning(
            "%s: latest -> %s is %s (%s); falling back to %s",
            root,
            step_dir_name(link.step),
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
    if json_int(step):
        return step
    return parse_step(step_dir.name) or 0
