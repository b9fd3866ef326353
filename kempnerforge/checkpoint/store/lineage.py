"""Lineage: which checkpoints the run that owns a root descends from (torch-free).

Every save records, in its ``metadata.json``, the ``run_id`` of the manager that wrote it (its
owner token) and the checkpoint that run resumed from (``resumed_from``); the root's owner record
(:mod:`.owner`) says which run writes the root now and where it resumed. After a rollback, the
checkpoints newer than the one it resumed from that other runs wrote are an abandoned branch:
*off the lineage*. The resume fallback never picks one, and retention counts them last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kempnerforge.checkpoint.store.layout import list_step_dirs
from kempnerforge.checkpoint.store.owner import Owner
from kempnerforge.checkpoint.store.recorded import pp_stages_of, read_metadata_json
from kempnerforge.checkpoint.store.verify import verify_checkpoint

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.records import CheckpointInfo

__all__ = [
    "AgeClock",
    "newest_on_lineage",
    "off_lineage",
    "published_after",
]


def off_lineage(step: int, run_id: str | None, owner: Owner | None) -> bool:
    """Is the checkpoint of ``step`` written by ``run_id`` on a branch the owning run left?

    True when the owner resumed from a checkpoint of this root, ``step`` is newer than that
    one, and another run (or an unknown one) wrote it.
    """
    if owner is None or owner.resumed_from is None:
        return False
    return step > owner.resumed_from and run_id != owner.token


def _complete(step_dir: Path, skipped: list[str] | None = None) -> tuple[bool, str | None]:
    """Verifiably complete (the full check of :mod:`.verify`), and the run that wrote it."""
    data = read_metadata_json(step_dir).data or {}
    run_id = data.get("run_id")
    verdict = verify_checkpoint(step_dir, pp_stages=pp_stages_of(data))
    if verdict.corrupt and skipped is not None:
        skipped.append(f"{step_dir.name} is corrupt ({verdict.reason})")
    return verdict.complete, run_id if isinstance(run_id, str) else None


def newest_on_lineage(
    root: Path, owner: Owner | None, *, skipped: list[str] | None = None
) -> Path | None:
    """The newest verifiably complete checkpoint under ``root`` not off the owner's lineage.

    A corrupt one is passed over (and described in ``skipped``, when given).
    """
    try:
        dirs = list_step_dirs(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for step, path in reversed(dirs):
        complete, run_id = _complete(path, skipped)
        if complete and not off_lineage(step, run_id, owner):
            return path
    return None


def published_after(root: Path, latest_step: int, owner: Owner | None) -> Path | None:
    """The newest complete checkpoint newer than ``latest_step`` that the owning run wrote.

    A run killed after renaming a save into place and before moving ``latest`` leaves exactly
    that; resuming from it continues the run's own lineage.
    """
    if owner is None:
        return None
    try:
        dirs = list_step_dirs(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for step, path in reversed(dirs):
        if step <= latest_step:
            return None
        complete, run_id = _complete(path)
        if complete and run_id == owner.token:
            return path
    return None


@dataclass(frozen=True)
class AgeClock:
    """The time ages are measured at: the file system's clock when the scan could read it."""

    now_s: float | None
    skew_free: bool

    def idle_s(self, c: CheckpointInfo) -> float | None:
        """Seconds from the newest write into incomplete ``c`` to now; None when unknown.

        Measured on the file system's own clock, an mtime far in the future cannot come from
        a live writer: it counts as stale, not as recent.
        """
        if c.complete or self.now_s is None:
            return None
        return self.age_s(c.mtime_s)

    def age_s(self, mtime_s: float) -> float | None:
        """Seconds from ``mtime_s`` to now; None when the time of the scan is unknown."""
        if self.now_s is None:
            return None
        return self.now_s - mtime_s

    def recent(self, idle_s: float | None, grace_s: float) -> bool:
        """Was something idle for ``idle_s`` written within ``grace_s``, by this clock?"""
        if idle_s is None:
            return False
        if self.skew_free and idle_s < -grace_s:
            return False  # dated ahead of the file system's clock: set by hand, not written
        return not idle_s > grace_s  # NaN counts as recent: never judged stale
