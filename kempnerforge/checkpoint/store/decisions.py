"""What retention decides: a :class:`Decision` per checkpoint, with the facts behind it, and the
:class:`RetentionPlan` that holds them (frozen values, torch-free).

The rules that make them are in :mod:`.retention`. A decision carries data, not sentences: the
rank in ``keep_last_n``, the idle time in seconds, the newest complete step it was compared with,
the milestone's source, the pin's note, a pending save's lease verdict. ``kf-ckpt`` words them
(``gc --json``'s ``detail``, ``ls --json``'s ``gc_detail``), with the same age formatter as
``kf-ckpt ls``'s age column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kempnerforge.checkpoint.store.layout import PendingKind
from kempnerforge.checkpoint.store.lease import LeaseVerdict

__all__ = ["Action", "Decision", "MilestoneSource", "Reason", "RetentionPlan"]


class Action(StrEnum):
    """What retention does with a checkpoint."""

    keep = "keep"
    delete = "delete"


class Reason(StrEnum):
    """Why a checkpoint is kept or deleted (the rules are in :mod:`.retention`)."""

    latest = "latest"
    milestone = "milestone"
    corrupt = "corrupt"
    in_flight = "in_flight"
    unreadable = "unreadable"
    within_keep_last_n = "within_keep_last_n"
    newest_complete = "newest_complete"
    keep_all = "keep_all"
    pinned = "pinned"
    no_policy = "no_policy"
    beyond_keep_last_n = "beyond_keep_last_n"
    abandoned_incomplete = "abandoned_incomplete"


@dataclass(frozen=True, kw_only=True)
class MilestoneSource:
    """What makes a checkpoint a dynamic milestone: a save of the config's window (``start``,
    ``stop``, ``strategy``), or, with ``recorded``, only the flag in its metadata.json."""

    recorded: bool
    start: int | None = None
    stop: int | None = None
    strategy: str | None = None


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Retention's verdict on one checkpoint or pending directory, with the facts behind it.

    The facts are recorded whatever the reason (``rank`` is set on a ``latest`` target that
    ranks too); ``reason`` says which rule decided. ``idle_s`` is the seconds from its newest
    write to the scan, for an incomplete checkpoint or a pending directory (negative: dated
    after the scan; NaN: an unreadable mtime; None: complete, or no scan time).
    """

    step: int
    path: Path
    action: Action
    reason: Reason
    size_bytes: int
    complete: bool = True
    corrupt: bool = False
    incomplete_reason: str | None = None
    """Why it is not complete, in the scan's words (``no .metadata``)."""
    scan_error: str | None = None
    """Why completeness could not be judged (an unreadable directory)."""
    keep_last_n: int | None = None
    """The ``keep_last_n`` it was planned with; None without a retention policy."""
    rank: int | None = None
    """Its place (1: the newest) among the newest ``keep_last_n`` complete checkpoints that are
    neither milestones nor pinned; None outside them."""
    newest_step: int | None = None
    """The newest complete step it was compared with; None when there is none."""
    idle_s: float | None = None
    milestone: MilestoneSource | None = None
    """Why it is a dynamic milestone; None when it is not one."""
    pin_note: str | None = None
    """The note of its pin, when it is pinned and the pin has one."""
    pending_kind: PendingKind | None = None
    """A pending directory's kind (a save, or an old copy set aside); None for a checkpoint."""
    writer: LeaseVerdict | None = None
    """A pending save's lease verdict (state, writer, heartbeat age); None without one."""
    superseded: bool = False
    """An old copy set aside whose ``step_<N>`` exists again: it may go."""

    @property
    def name(self) -> str:
        """The directory name, ``step_<N>`` (or the pending directory's name)."""
        return self.path.name


@dataclass(frozen=True, kw_only=True)
class RetentionPlan:
    """A verdict for every checkpoint of a root, sorted by step. Applying it is a separate call."""

    root: Path
    keep_last_n: int
    decisions: tuple[Decision, ...]
    has_policy: bool = True
    """False for a plan made without a retention policy: it keeps everything."""
    pending: tuple[Decision, ...] = ()
    """Verdicts on the saves in flight and old copies set aside (``.kf-inflight.*``,
    ``.kf-replaced.*``); their ``path`` names the directory, their ``step`` the step it is for."""

    @property
    def to_keep(self) -> tuple[Decision, ...]:
        """The decisions that keep a checkpoint."""
        return tuple(d for d in self.decisions if d.action is Action.keep)

    @property
    def to_delete(self) -> tuple[Decision, ...]:
        """The decisions that delete a checkpoint or a pending directory, checkpoints first."""
        return tuple(d for d in self.decisions + self.pending if d.action is Action.delete)

    @property
    def bytes_freed(self) -> int:
        """Bytes the deletions free (apparent sizes, as scanned)."""
        return sum(d.size_bytes for d in self.to_delete)
