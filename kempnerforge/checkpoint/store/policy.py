"""Adopting an existing root: its recorded policy, and marking its milestones (torch-free).

Checkpoints written by upstream KempnerForge (and other tools) record no config and no milestone
flag, so a command run on such a root without a job file knows no retention policy. Retention
then deletes nothing (restic's rule: no known policy, no deletion), and ``kf-ckpt mark`` teaches
the root once, through :func:`mark_root`:

* every complete checkpoint that the window makes a milestone gets ``"dynamic_milestone": true``
  in its metadata.json (created when missing; other keys kept), so retention keeps it forever,
  whatever config a later command uses;
* with a whole config (a job file), that config is recorded as the root's policy, in
  ``<root>/.kf-ckpt.policy`` (:data:`~kempnerforge.checkpoint.store.layout.POLICY_NAME`)::

    {"format": "kf-ckpt-policy", "format_version": 1,
     "checkpoint": {"dir": ..., "interval": 4, "keep_last_n": 2, "dyn_ckpt_window": {...}, ...},
     "source": "job.toml", "recorded_at": "2026-11-30T00:10:00+00:00", "user": "alice"}

  :func:`~kempnerforge.checkpoint.store.selection.select_config` finds it: after a job file given
  on the command line, before the config recorded in the checkpoints.

Both writes are atomic and happen under the root's lock; marking keeps the modification times of
metadata.json and the step directory, so a checkpoint's age stays the time it was saved.
:func:`likely_milestones` spots steps that look like an unmarked power-2 window, for the warning
gc gives before deleting them.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.catalog import check_root
from kempnerforge.checkpoint.store.files import write_json_atomic
from kempnerforge.checkpoint.store.layout import (
    METADATA_JSON,
    POLICY_NAME,
    check_complete,
    list_step_dirs,
)
from kempnerforge.checkpoint.store.recorded import pp_stages_of, read_metadata_json
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import config_from_dict, config_to_dict
from kempnerforge.errors import ConfigError

__all__ = [
    "MIN_RUN",
    "POLICY_FORMAT",
    "MarkResult",
    "likely_milestones",
    "mark_root",
    "read_policy",
]

POLICY_FORMAT = "kf-ckpt-policy"
MIN_RUN = 4
""":func:`likely_milestones` names a run of at least this many steps."""
_MAX_POLICY_BYTES = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, kw_only=True)
class MarkResult:
    """What :func:`mark_root` did (or, for a dry run, would do)."""

    root: Path
    dry_run: bool
    checkpoints: int
    """How many checkpoint directories the root holds."""
    marked: tuple[int, ...] = ()
    """Milestones whose metadata.json now records the flag (would, in a dry run)."""
    already_marked: tuple[int, ...] = ()
    skipped: tuple[tuple[int, str], ...] = ()
    """Milestones left as they are, and why (incomplete, unreadable metadata.json)."""
    policy_path: Path | None = None
    """Where the policy is recorded (would be, in a dry run); None when none was given."""
    policy_changed: bool = False
    """The policy file was written (or would be): it was missing or recorded another config."""


def read_policy(root: Path) -> tuple[CheckpointConfig, Path] | None:
    """The policy recorded in ``root`` by ``kf-ckpt mark``, and its path; None when there is none.

    Read leniently, as any recorded config: unknown keys warn (the loader's rule).

    Raises:
        ConfigError: the policy file exists but is unreadable, corrupt or invalid (a file that
            says there is a policy must never silently mean "no policy").
    """
    path = root / POLICY_NAME
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(_bad_policy(path, exc.strerror or str(exc))) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(_bad_policy(path, "not a regular file"))
        raw = os.read(fd, _MAX_POLICY_BYTES + 1)
    finally:
        os.close(fd)
    try:
        if len(raw) > _MAX_POLICY_BYTES:
            raise ValueError(f"over {_MAX_POLICY_BYTES} bytes")
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != POLICY_FORMAT:
            raise ValueError(f"not a {POLICY_FORMAT} document")
        if not isinstance(doc.get("checkpoint"), dict):
            raise ValueError("no checkpoint table")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(_bad_policy(path, str(exc))) from exc
    return config_from_dict(doc["checkpoint"], source=str(path)), path


def _bad_policy(path: Path, why: str) -> str:
    return f"cannot use the retention policy {path}: {why}; record it again, or remove it"


def mark_root(
    root: str | Path,
    config: CheckpointConfig,
    *,
    record_policy: bool = True,
    policy_source: str | None = None,
    dry_run: bool = False,
    wait_lock_s: float = 0.0,
) -> MarkResult:
    """Record the milestone flag of ``config``'s window in ``root``, and ``config`` as its policy.

    Idempotent: a flag already recorded and an identical policy are left untouched. A root
    without checkpoints is left untouched too (no policy file is created in it). With
    ``dry_run`` nothing is written and the lock is not taken.

    Args:
        config: the run's config; its ``dyn_ckpt_window`` decides the milestones.
        record_policy: also record ``config`` as the root's retention policy.
        policy_source: where ``config`` came from (a job file), kept in the policy file.

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        LockBusyError: another process holds the lock after ``wait_lock_s`` seconds.
        RetentionError: the lock file cannot be used.

    Example:
        >>> from kempnerforge.config import load_config
        >>> result = mark_root("runs/upstream/ckpt", load_config("job.toml"))  # doctest: +SKIP
        >>> result.marked, result.policy_path  # doctest: +SKIP
        ((0, 1, 2, 4, 8), PosixPath('runs/upstream/ckpt/.kf-ckpt.policy'))
    """
    # Imported here: every ls and gc reads the policy; only mark writes (socket, fcntl, ...).
    from kempnerforge.checkpoint.store._lock import hold_lock

    path = check_root(root)
    if not list_step_dirs(path):
        return MarkResult(root=path, dry_run=dry_run, checkpoints=0)
    lock = contextlib.nullcontext() if dry_run else hold_lock(path, wait_lock_s=wait_lock_s)
    with lock:
        dirs = list_step_dirs(path)
        marked, already, skipped = [], [], []
        for step, step_dir in dirs:
            if not config.is_dynamic_milestone(step):
                continue
            verdict = _mark_one(step, step_dir, dry_run=dry_run)
            if verdict == "marked":
                marked.append(step)
            elif verdict == "already":
                already.append(step)
            else:
                skipped.append((step, verdict))
        policy_path, changed = None, False
        if record_policy:
            policy_path = path / POLICY_NAME
            changed = _record_policy(path, config, policy_source, dry_run=dry_run)
    return MarkResult(
        root=path,
        dry_run=dry_run,
        checkpoints=len(dirs),
        marked=tuple(marked),
        already_marked=tuple(already),
        skipped=tuple(skipped),
        policy_path=policy_path,
        policy_changed=changed,
    )


def _mark_one(step: int, step_dir: Path, *, dry_run: bool) -> str:
    """``"marked"``, ``"already"``, or why the milestone ``step_dir`` is left as it is."""
    read = read_metadata_json(step_dir)
    exists = (step_dir / METADATA_JSON).exists() or (step_dir / METADATA_JSON).is_symlink()
    if read.data is None and exists:
        return f"{read.warning}; left as it is"
    data: dict[str, Any] = dict(read.data or {"step": step})
    status = check_complete(step_dir, pp_stages=pp_stages_of(data))
    if not status.complete:
        return f"incomplete ({status.reason}); only complete checkpoints are marked"
    if data.get("dynamic_milestone") is True:
        return "already"
    if dry_run:
        return "marked"
    data["dynamic_milestone"] = True
    before_dir = os.stat(step_dir)
    before_meta = os.stat(step_dir / METADATA_JSON) if exists else before_dir
    try:
        write_json_atomic(step_dir / METADATA_JSON, data)
    finally:
        with contextlib.suppress(OSError):  # keep the checkpoint's age as it was
            os.utime(
                step_dir / METADATA_JSON, ns=(before_meta.st_atime_ns, before_meta.st_mtime_ns)
            )
            os.utime(step_dir, ns=(before_dir.st_atime_ns, before_dir.st_mtime_ns))
    return "marked"


def _record_policy(
    root: Path, config: CheckpointConfig, source: str | None, *, dry_run: bool
) -> bool:
    table = config_to_dict(config)
    try:
        current = read_policy(root)
    except ConfigError:
        current = None  # a broken policy file is replaced
    if current is not None and config_to_dict(current[0]) == table:
        return False
    if not dry_run:
        from datetime import UTC, datetime

        write_json_atomic(
            root / POLICY_NAME,
            {
                "format": POLICY_FORMAT,
                "format_version": 1,
                "checkpoint": table,
                "source": source,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "user": _user(),
            },
        )
    return True


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def likely_milestones(steps: Iterable[int]) -> tuple[int, ...]:
    """Steps among ``steps`` that look like the milestones of a power-2 window.

    The longest run ``s, s+1, s+2, s+4, s+8, ...`` (each step present) of at least
    :data:`MIN_RUN` steps; ``()`` when there is none. gc warns with it before deleting
    checkpoints of a root whose config has no window: they are probably an unmarked window's.

    Example:
        >>> likely_milestones([0, 1, 2, 4, 8, 16, 20])
        (0, 1, 2, 4, 8, 16)
        >>> likely_milestones([100, 200, 300])
        ()
    """
    present = set(steps)
    best: tuple[int, ...] = ()
    for start in sorted(present):
        if start + 1 not in present:
            continue
        run, gap = [start], 1
        while start + gap in present:
            run.append(start + gap)
            gap *= 2
        if len(run) > len(best):
            best = tuple(run)
    return best if len(best) >= MIN_RUN else ()
