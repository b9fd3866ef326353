"""The owner of a checkpoint root: the one job allowed to publish checkpoints and move ``latest``.

A :class:`~kempnerforge.checkpoint.manager.CheckpointManager` that resumes (``load()``) or first
saves on a root takes ownership: it records a fresh random token in ``<root>/.kf-owner``, under
the root's lock. Publishing a save re-reads the record under the same lock, and a manager whose
token is no longer there (a requeued job took over the root while this one was still running)
refuses to publish or move ``latest``. The record also says which checkpoint the owning run
resumed from, and whether that was a rollback (older than ``latest`` was): retention and the
resume fallback follow that lineage.

Torch-free. Written by :func:`claim_root`; read leniently (a missing or corrupt record is no owner).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.files import (
    read_latest,
    unique_suffix,
    update_latest,
    write_json_atomic,
)
from kempnerforge.checkpoint.store.layout import OWNER_NAME, PUBLISH_LOCK_NAME, parse_step
from kempnerforge.checkpoint.store.recorded import json_int, tagged_document
from kempnerforge.errors import CheckpointSaveError, LockBusyError, RetentionError

__all__ = ["CLAIM_LOCK_WAIT_S", "Owner", "claim_root", "new_owner", "read_owner", "write_owner"]

_MAX_OWNER_BYTES = 64 * 1024
CLAIM_LOCK_WAIT_S = 300.0
"""How long taking ownership waits for the locks (a publish, a ``kf-ckpt gc``)."""


@dataclass(frozen=True, kw_only=True)
class Owner:
    """The content of ``<root>/.kf-owner``."""

    token: str
    """Random, unique per manager; recorded as ``run_id`` in the metadata.json of its saves."""
    host: str
    pid: int
    since: str
    """When it took ownership (ISO 8601, UTC)."""
    resumed_from: int | None = None
    """The step of the checkpoint of this root the run resumed from; None for a fresh start or a
    checkpoint loaded from elsewhere."""
    resumed_from_path: str | None = None
    """The checkpoint the run resumed from, as a path (also outside the root)."""
    rolled_back_from: int | None = None
    """``latest``'s step when the run resumed from an older checkpoint (a rollback), else None."""


def new_owner(
    *,
    resumed_from: int | None = None,
    resumed_from_path: str | None = None,
    rolled_back_from: int | None = None,
) -> Owner:
    """An owner record for this process with a fresh token."""
    import socket  # here: every scan reads the owner record, only a manager makes one

    return Owner(
        token=unique_suffix(),
        host=socket.gethostname(),
        pid=os.getpid(),
        since=datetime.now(UTC).isoformat(timespec="seconds"),
        resumed_from=resumed_from,
        resumed_from_path=resumed_from_path,
        rolled_back_from=rolled_back_from,
    )


def write_owner(root: Path, owner: Owner) -> None:
    """Publish ``owner`` as ``<root>/.kf-owner`` atomically (hold the root's lock)."""
    write_json_atomic(root / OWNER_NAME, {"format": "kf-owner", **asdict(owner)})


def read_owner(root: Path) -> Owner | None:
    """The root's owner record; None when there is none or it cannot be read or parsed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(root / OWNER_NAME, flags)
    except OSError:
        return None
    try:
        raw = os.read(fd, _MAX_OWNER_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > _MAX_OWNER_BYTES:
        return None
    data = tagged_document(raw, "kf-owner")
    if data is None:
        return None
    token, host, pid = data.get("token"), data.get("host"), data.get("pid")
    if not (isinstance(token, str) and token and isinstance(host, str) and json_int(pid)):
        return None
    return Owner(
        token=token,
        host=host,
        pid=pid,
        since=str(data.get("since", "")),
        resumed_from=_opt_int(data.get("resumed_from")),
        resumed_from_path=_opt_str(data.get("resumed_from_path")),
        rolled_back_from=_opt_int(data.get("rolled_back_from")),
    )


def _opt_int(value: Any) -> int | None:
    return value if json_int(value) and value >= 0 else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def claim_root(
    root: Path,
    *,
    resumed_from: Path | None = None,
    wait_lock_s: float = CLAIM_LOCK_WAIT_S,
) -> Owner:
    """Make this job the owner of ``root`` (superseding any other) and return its record.

    Under the lock: finish an interrupted swap (:func:`recover_swaps`), then record a fresh
    token. When ``resumed_from`` is a checkpoint of this root older than ``latest``, this is a
    rollback: it is recorded, and ``latest`` is pointed at ``resumed_from`` at once, so that a
    restart before the next save resumes on the branch this run continues.

    Raises:
        CheckpointSaveError: the lock stays busy, or the record cannot be written.
    """
    # Imported here: every scan reads the owner record, only a manager takes ownership.
    import logging

    from kempnerforge.checkpoint.store._lock import hold_lock
    from kempnerforge.checkpoint.store.swap import recover_swaps

    step = _own_step(root, resumed_from)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with (
            hold_lock(root, wait_lock_s=wait_lock_s, name=PUBLISH_LOCK_NAME),
            hold_lock(root, wait_lock_s=wait_lock_s),
        ):
            recover_swaps(root)
            latest = read_latest(root).step
            rolled_back = (
                latest if step is not None and latest is not None and step < latest else None
            )
            owner = new_owner(
                resumed_from=step,
                resumed_from_path=None if resumed_from is None else str(resumed_from),
                rolled_back_from=rolled_back,
            )
            write_owner(root, owner)
            if rolled_back is not None and step is not None:
                update_latest(root, step)
                logging.getLogger(__name__).warning(
                    "%s: resumed from step %d, older than latest (step %d): a rollback; latest "
                    "now names step %d, and step %d's branch is no longer this run's lineage",
                    root,
                    step,
                    rolled_back,
                    step,
                    rolled_back,
                )
    except (LockBusyError, RetentionError) as exc:
        raise CheckpointSaveError(f"cannot take ownership of {root}: {exc}") from exc
    except OSError as exc:
        raise CheckpointSaveError(f"cannot record the owner of {root}: {exc}") from exc
    return owner


def _own_step(root: Path, checkpoint: Path | None) -> int | None:
    """The step of ``checkpoint`` when it is a ``step_<N>`` directly inside ``root``."""
    if checkpoint is None:
        return None
    with contextlib.suppress(OSError):
        if checkpoint.parent.resolve() == root.resolve():
            return parse_step(checkpoint.name)
    return None
