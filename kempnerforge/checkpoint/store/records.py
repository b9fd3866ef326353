"""The records a scan of a checkpoint root produces: one per checkpoint, one per skipped entry,
and the catalog that holds them all (frozen values, torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kempnerforge.checkpoint.store.files import LatestLink

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store._pending import PendingDir
    from kempnerforge.checkpoint.store.owner import Owner
    from kempnerforge.checkpoint.store.pins import Pin

__all__ = ["Catalog", "CheckpointFacts", "CheckpointInfo", "SkippedEntry"]


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """One ``step_<N>`` directory as found on disk."""

    step: int
    path: Path
    complete: bool
    incomplete_reason: str | None
    is_latest: bool
    tokens_seen: int | None
    dynamic_milestone: bool
    """``"dynamic_milestone": true`` is recorded in its metadata.json."""
    recorded_config: dict[str, Any] | None
    """The ``"checkpoint"`` table recorded in its metadata.json (read-only: records taken from
    the scan cache share one dict per distinct table)."""
    size_bytes: int
    file_count: int
    mtime_s: float
    """Newest modification time of the directory or anything in it (seconds since the epoch).

    A save in progress keeps it fresh (DCP writes continuously): retention keeps an incomplete
    checkpoint whose ``mtime_s`` is recent as in flight, see
    :data:`kempnerforge.checkpoint.store.retention.IN_FLIGHT_GRACE_S`."""
    warnings: tuple[str, ...] = ()
    scan_error: str | None = None
    """Why completeness could not be judged (the directory or a ``pp*/`` stage is unreadable)."""
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    """The ``"metrics"`` recorded in its metadata.json (name -> number; None: not finite)."""
    pin: Pin | None = None
    """Its pin (:mod:`kempnerforge.checkpoint.store.pins`), None when it is not pinned."""
    size_known: bool = True
    """False when a light scan (the manager's retention round) did not walk this complete
    checkpoint: ``size_bytes`` and ``file_count`` are then 0 and ``mtime_s`` is the directory's
    own mtime (see :mod:`kempnerforge.checkpoint.store._light_scan`)."""
    corrupt: bool = False
    """Its marker is there but it is unusable (an empty or unreadable ``.metadata``, a missing
    or short shard): never complete, never deleted automatically. ``incomplete_reason`` says
    why. A scan finds empty markers; the rest takes the full check
    (:mod:`kempnerforge.checkpoint.store.verify`)."""
    verified: bool = False
    """The full check passed (a scan alone checks only the markers)."""

    @property
    def pinned(self) -> bool:
        """The checkpoint is pinned: retention keeps it."""
        return self.pin is not None

    run_id: str | None = None
    """The ``run_id`` recorded in its metadata.json: the manager (owner token) that wrote it."""

    @property
    def name(self) -> str:
        """The directory name, ``step_<N>``."""
        return self.path.name


class CheckpointFacts(NamedTuple):
    """What a scan learned about one step directory: a :class:`CheckpointInfo` but for where the
    directory is (``step``, ``path``, ``is_latest``).

    Made by a walk of the directory and its metadata.json
    (:mod:`kempnerforge.checkpoint.store._facts`), by a probe (the light scan), or from the scan
    cache (:mod:`kempnerforge.checkpoint.store._scan_cache`). The fields mean what the
    :class:`CheckpointInfo` fields of the same name mean.
    """

    complete: bool
    incomplete_reason: str | None
    tokens_seen: int | None
    dynamic_milestone: bool
    recorded_config: dict[str, Any] | None
    size_bytes: int
    file_count: int
    mtime_s: float
    warnings: tuple[str, ...]
    scan_error: str | None
    metrics: dict[str, float | int | None]
    pin: Pin | None
    size_known: bool
    corrupt: bool
    verified: bool
    run_id: str | None

    def to_info(self, *, step: int, path: Path, is_latest: bool) -> CheckpointInfo:
        """The record of these facts about the step directory ``path`` (of ``step``)."""
        (
            complete,
            incomplete_reason,
            tokens_seen,
            dynamic_milestone,
            recorded_config,
            size_bytes,
            file_count,
            mtime_s,
            warnings,
            scan_error,
            metrics,
            pin,
            size_known,
            corrupt,
            verified,
            run_id,
        ) = self
        # Filled directly, not through the frozen __init__ (an object.__setattr__ per field):
        # warm scan+plan of 2,000 checkpoints 72-80 ms this way, 79-87 ms through __init__.
        # One dict literal copied in, not filled in place: plan_retention then reads 2,000 of
        # them in 45 M instructions instead of 59 M (callgrind), and building one costs a third.
        info = object.__new__(CheckpointInfo)
        info.__dict__.update(
            {
                "complete": complete,
                "incomplete_reason": incomplete_reason,
                "tokens_seen": tokens_seen,
                "dynamic_milestone": dynamic_milestone,
                "recorded_config": recorded_config,
                "size_bytes": size_bytes,
                "file_count": file_count,
                "mtime_s": mtime_s,
                "warnings": warnings,
                "scan_error": scan_error,
                "metrics": metrics,
                "pin": pin,
                "size_known": size_known,
                "corrupt": corrupt,
                "verified": verified,
                "run_id": run_id,
                "step": step,
                "path": path,
                "is_latest": is_latest,
            }
        )
        return info


@dataclass(frozen=True, kw_only=True)
class SkippedEntry:
    """A direct child of the root that is not a checkpoint; scan and gc never touch it."""

    name: str
    path: Path
    reason: str
    toolkit_entry: bool = False
    """One of the toolkit's own entries (``latest``, the lock file, the trash)."""
    dcp_checkpoint: bool = False
    """A DCP checkpoint under a name that is not ``step_<N>`` (torchtitan's ``step-<N>``, a
    renamed copy): never managed here, but it can be exported, shown and loaded."""


@dataclass(frozen=True, kw_only=True)
class Catalog:
    """Everything :func:`scan` found under one checkpoint root."""

    root: Path
    checkpoints: tuple[CheckpointInfo, ...]
    """Sorted by step."""
    skipped: tuple[SkippedEntry, ...]
    latest: LatestLink
    warnings: tuple[str, ...] = ()
    trash_entries: int = 0
    """Entries an interrupted gc left in ``.kf-trash`` (the next gc removes them)."""
    scanned_at_s: float | None = None
    """When the scan started (``time.time()``); None for a catalog not read from disk.

    Retention measures how long ago an incomplete checkpoint was last written against it."""
    pending: tuple[PendingDir, ...] = ()
    """Saves in flight and old copies set aside by a swap (``.kf-inflight.*``, ``.kf-replaced.*``),
    sorted by step."""
    owner: Owner | None = None
    """The job that owns the root (``.kf-owner``): its token and where its run resumed from."""
    clock_s: float | None = None
    """The file system's clock at the scan (:func:`~kempnerforge.checkpoint.store.lease.
    file_system_now`), read only when something is incomplete or pending; None otherwise or
    when the root cannot be written. Retention measures ages against it, skew-free."""
    cache_hits: int = field(default=0, compare=False)
    """Checkpoints taken from the scan cache instead of being walked (diagnostics only)."""
    _by_step: dict[int, CheckpointInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_step", {info.step: info for info in self.checkpoints})

    @property
    def newest_complete(self) -> CheckpointInfo | None:
        """The complete checkpoint with the highest step, if any."""
        return next((c for c in reversed(self.checkpoints) if c.complete), None)

    @property
    def latest_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint ``latest`` names, when the link is honoured and the directory exists."""
        return None if self.latest.step is None else self._by_step.get(self.latest.step)

    @property
    def total_size_bytes(self) -> int:
        """Bytes held by all checkpoints."""
        return sum(c.size_bytes for c in self.checkpoints)

    def get(self, step: int) -> CheckpointInfo | None:
        """The checkpoint of ``step``, if there is one."""
        return self._by_step.get(step)
