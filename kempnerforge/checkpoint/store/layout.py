"""The on-disk format of a checkpoint root: the one module that knows names and markers.

Writers (the manager) and readers (scan, retention, export, the CLI) all go through here::

    <root>/
      latest -> step_1500     relative symlink, swapped atomically
      step_1500/
        .metadata             DCP global metadata, written last: its presence means complete
        __0_0.distcp ...      DCP shards
        pp0/ pp1/ ...         pipeline parallel: one DCP tree per stage, each with .metadata
        train_state.pt        step, tokens_seen, scheduler, dataloader, RNG, extras
        metadata.json         {"step", "tokens_seen", "dynamic_milestone", "checkpoint": {...},
                               "metrics": {...}}
        pinned.json           present when the checkpoint is pinned: note, time, user, host
      .kf-ckpt.lock           advisory lock held while retention plans and deletes
      .kf-trash/              victims are renamed here before they are removed
      .kf-ckpt.cache          scan cache: what complete checkpoints hold (they never change)
      .kf-ckpt.policy         the retention policy recorded by ``kf-ckpt mark`` (JSON)
      .kf-publish.lock        lock held while a save is published or ownership changes
      .kf-owner               the job that owns the root: only it publishes and moves latest
      .kf-inflight.step_1600.<id>/   a save being written (with its writer lease, .kf-lease);
                              renamed to step_1600 once complete
      .kf-replaced.step_1500.<id>/   an old copy set aside while a re-save replaces it

No torch import here: ``kf-ckpt ls`` and ``gc`` must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_NAME",
    "DCP_METADATA",
    "LATEST_NAME",
    "LEASE_NAME",
    "LOCK_NAME",
    "METADATA_JSON",
    "OWNER_NAME",
    "PIN_NAME",
    "POLICY_NAME",
    "PUBLISH_LOCK_NAME",
    "READERS_NAME",
    "TRAIN_STATE",
    "TRASH_NAME",
    "Completeness",
    "MetadataRead",
    "PendingKind",
    "PendingName",
    "assess_complete",
    "check_complete",
    "guess_step",
    "holds_dcp_checkpoint",
    "inflight_dir_name",
    "is_checkpoint_dir",
    "is_checkpoint_root",
    "list_foreign_checkpoints",
    "list_step_dirs",
    "managed_path_reason",
    "parse_pending",
    "parse_pp_stage",
    "parse_step",
    "pp_stage_dirs",
    "pp_stages_of",
    "read_metadata_json",
    "recorded_pp_stages",
    "replaced_dir_name",
    "step_dir_name",
]

LATEST_NAME = "latest"
LOCK_NAME = ".kf-ckpt.lock"
TRASH_NAME = ".kf-trash"
READERS_NAME = ".kf-ckpt.readers"
"""Read leases: a reader (export, show) holds a shared byte-range lock at offset ``step``, and
gc does not delete a checkpoint whose byte is locked (see ``store/_lock.py``)."""
CACHE_NAME = ".kf-ckpt.cache"
"""The scan cache of a root (JSON, rewritten atomically by ``scan``; safe to delete by hand)."""
DCP_METADATA = ".metadata"
METADATA_JSON = "metadata.json"
TRAIN_STATE = "train_state.pt"
PIN_NAME = "pinned.json"
"""Present in a step directory when the checkpoint is pinned (see
:mod:`kempnerforge.checkpoint.store.pins`): retention keeps it whatever its age."""
POLICY_NAME = ".kf-ckpt.policy"
"""The retention policy of a root recorded by ``kf-ckpt mark`` (JSON; see
:mod:`kempnerforge.checkpoint.store.policy`)."""
PUBLISH_LOCK_NAME = ".kf-publish.lock"
"""Serialises publishing a save and taking ownership of the root (see :mod:`.publish`)."""
OWNER_NAME = ".kf-owner"
"""The owner record of a root (JSON): the token of the one job allowed to publish there."""
LEASE_NAME = ".kf-lease"
"""The writer lease inside an in-flight save directory (JSON; its mtime is the heartbeat)."""

_STEP_RE = re.compile(r"step_(\d+)")
# Step-like names other tools write (torchtitan: ``step-1000``); read, never managed.
_FOREIGN_STEP_RE = re.compile(r"step[-_](\d+)")
_PP_RE = re.compile(r"pp(\d+)")
_PENDING_RE = re.compile(r"\.kf-(inflight|replaced)\.step_(\d+)\.([0-9a-f]{8,32})")
_METADATA_MAX_BYTES = 16 * 2**20  # a metadata.json is a few kB; refuse to slurp a huge file
_READ_CHUNK = 2**16
_METADATA_MAX_DEPTH = 32  # ours nests 3 levels; deeper is hostile (and would recurse later)


def step_dir_name(step: int) -> str:
    """``step_<N>``: the directory name of the checkpoint of ``step``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return f"step_{step}"


def parse_step(name: str) -> int | None:
    """The step of a directory name, or None when ``name`` is not a canonical ``step_<N>``.

    ``step_007`` is not canonical (it would alias ``step_7``) and is therefore not a checkpoint.
    """
    match = _STEP_RE.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(1))
    return step if step_dir_name(step) == name else None


def guess_step(name: str) -> int | None:
    """The step a checkpoint directory name suggests: ``step_<N>``, also non-canonical, or
    torchtitan's ``step-<N>``. Only for reading a checkpoint; retention counts ``step_<N>`` alone.
    """
    match = _FOREIGN_STEP_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def holds_dcp_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a DCP checkpoint (its ``.metadata``, or ``pp<k>/`` stages).

    Any such directory can be read (exported, shown, loaded) whatever its name and whoever wrote
    it; only the ``step_<N>`` children of a root are managed by retention.
    """
    return (path / DCP_METADATA).is_file() or bool(pp_stage_dirs(path))


def list_foreign_checkpoints(root: Path) -> list[Path]:
    """Direct children of ``root`` that hold a DCP checkpoint but are not ``step_<N>`` dirs.

    For example torchtitan's ``step-1000``, or a copy renamed by hand. Sorted by the step their
    name suggests, then by name. Symlinks are not followed.
    """
    found: list[tuple[int, str, Path]] = []
    with contextlib.suppress(OSError), os.scandir(root) as it:
        for entry in it:
            if parse_step(entry.name) is not None or not entry.is_dir(follow_symlinks=False):
                continue
            if parse_pending(entry.name) is not None:
                continue  # a save of ours not yet published (or set aside), not another tool's
            path = Path(entry.path)
            if holds_dcp_checkpoint(path):
                found.append((guess_step(entry.name) or -1, entry.name, path))
    return [path for _, _, path in sorted(found)]


class PendingKind(StrEnum):
    """What a pending (not yet, or no longer, ``step_<N>``) directory of a root holds."""

    save = "save"
    """``.kf-inflight.step_<N>.<id>``: a save being written, renamed to ``step_<N>`` when done."""
    replaced = "replaced"
    """``.kf-replaced.step_<N>.<id>``: the old ``step_<N>``, set aside while a re-save swaps in."""


@dataclass(frozen=True, kw_only=True)
class PendingName:
    """The parts of a pending directory's name."""

    kind: PendingKind
    step: int
    save_id: str


def inflight_dir_name(step: int, save_id: str) -> str:
    """``.kf-inflight.step_<N>.<save_id>``: where a save of ``step`` is written until complete."""
    return f".kf-inflight.{step_dir_name(step)}.{save_id}"


def replaced_dir_name(step: int, save_id: str) -> str:
    """``.kf-replaced.step_<N>.<save_id>``: an old ``step_<N>`` set aside during a swap."""
    return f".kf-replaced.{step_dir_name(step)}.{save_id}"


def parse_pending(name: str) -> PendingName | None:
    """The parts of an in-flight or set-aside directory name, or None for any other name."""
    match = _PENDING_RE.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(2))
    if step_dir_name(step) != f"step_{match.group(2)}":
        return None
    kind = PendingKind.save if match.group(1) == "inflight" else PendingKind.replaced
    return PendingName(kind=kind, step=step, save_id=match.group(3))


def parse_pp_stage(name: str) -> int | None:
    """The stage ``k`` of a pipeline-parallel stage directory name ``pp<k>``, else None."""
    match = _PP_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def pp_stage_dirs(step_dir: Path) -> list[tuple[int, Path]]:
    """The pipeline-parallel stage directories ``pp<k>/`` of a checkpoint, sorted by stage."""
    stages: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError), os.scandir(step_dir) as it:
        for entry in it:
            match = _PP_RE.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False):
                stages.append((int(match.group(1)), Path(entry.path)))
    return sorted(stages)


@dataclass(frozen=True, kw_only=True)
class Completeness:
    """Whether a checkpoint directory holds a finished save, and if not, why."""

    complete: bool
    reason: str | None = None


def check_complete(step_dir: Path, *, pp_stages: int | None = None) -> Completeness:
    """Is ``step_dir`` a finished save?

    Complete means DCP's ``.metadata`` is present (DCP writes it last). A pipeline-parallel
    checkpoint (``pp*/`` children) is complete when every stage has its own ``.metadata``; when
    ``pp_stages`` (recorded in metadata.json) is known, every stage ``pp0 .. pp{n-1}`` must exist.
    """
    stages = {k: (path / DCP_METADATA).is_file() for k, path in pp_stage_dirs(step_dir)}
    has_dcp_metadata = not stages and (step_dir / DCP_METADATA).is_file()
    return assess_complete(has_dcp_metadata=has_dcp_metadata, stages=stages, pp_stages=pp_stages)


def assess_complete(
    *, has_dcp_metadata: bool, stages: Mapping[int, bool], pp_stages: int | None = None
) -> Completeness:
    """The rule of :func:`check_complete`, applied to a listing the caller already made (no I/O).

    Args:
        has_dcp_metadata: the step directory itself holds DCP's ``.metadata`` file.
        stages: ``k`` of every ``pp<k>/`` stage directory -> whether it holds ``.metadata``.
        pp_stages: the number of stages recorded in metadata.json, when known.
    """
    if not stages:
        if pp_stages:
            return Completeness(complete=False, reason=f"no pp*/ stage of {pp_stages} written")
        if has_dcp_metadata:
            return Completeness(complete=True)
        return Completeness(complete=False, reason=f"no DCP {DCP_METADATA}")
    missing = [f"pp{k}" for k, present in stages.items() if not present]
    if pp_stages:
        missing += [f"pp{k}" for k in range(pp_stages) if k not in stages]
    if missing:
        return Completeness(
            complete=False, reason=f"no DCP {DCP_METADATA} in {', '.join(sorted(set(missing)))}"
        )
    return Completeness(complete=True)


@dataclass(frozen=True, kw_only=True)
class MetadataRead:
    """What ``metadata.json`` of a checkpoint says, or why it could not be read."""

    data: dict[str, Any] | None
    warning: str | None = None
    missing: bool = False
    """There is no metadata.json at all (as opposed to one that cannot be read)."""


def read_metadata_json(step_dir: str | Path, *, dir_fd: int | None = None) -> MetadataRead:
    """Read ``metadata.json``; a missing, unreadable or corrupt file is a warning, not a crash.

    A symlink is never followed, a FIFO named ``metadata.json`` never blocks, and a file over
    16 MiB is refused rather than read. With ``dir_fd``, a relative ``step_dir`` is resolved
    from that open directory (as in :mod:`os`), which saves path lookups in large scans.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(step_dir, METADATA_JSON), flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return MetadataRead(data=None, warning=f"no {METADATA_JSON}", missing=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW refused a symlink
            return MetadataRead(data=None, warning=f"{METADATA_JSON} is a symlink; ignored")
        return MetadataRead(data=None, warning=f"cannot read {METADATA_JSON}: {exc}")
    try:
        chunks = [os.read(fd, _READ_CHUNK)]
        # No fstat: a short read of a regular file is its end (fast scans read thousands).
        while len(chunks[-1]) == _READ_CHUNK:
            if len(chunks) * _READ_CHUNK > _METADATA_MAX_BYTES:
                limit = f"over the {_METADATA_MAX_BYTES} byte limit"
                return MetadataRead(data=None, warning=f"{METADATA_JSON} is {limit}; ignored")
            chunks.append(os.read(fd, _READ_CHUNK))
        text = b"".join(chunks).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return MetadataRead(data=None, warning=f"cannot read {METADATA_JSON}: {exc}")
    finally:
        os.close(fd)
    try:
        data = json.loads(text)
    except RecursionError:
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: nested too deep")
    except ValueError as exc:  # also an integer of more digits than Python converts
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: {exc}")
    if not isinstance(data, dict):
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: not a JSON object")
    if _deeper_than(data, _METADATA_MAX_DEPTH):
        deep = f"nested deeper than {_METADATA_MAX_DEPTH} levels"
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: {deep}")
    return MetadataRead(data=data)


def _deeper_than(data: Any, limit: int) -> bool:
    """Does ``data`` (parsed JSON) nest containers more than ``limit`` levels? (No recursion.)"""
    level: list[Any] = [data]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def pp_stages_of(data: Mapping[str, Any] | None) -> int | None:
    """The ``pp_stages`` count a metadata.json document records, if it is a valid integer."""
    stages = (data or {}).get("pp_stages")
    return stages if isinstance(stages, int) and not isinstance(stages, bool) else None


def list_step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Direct children of ``root`` that are checkpoint directories, sorted by step.

    Symlinks named ``step_<N>`` and non-canonical names are not checkpoints. Cheap: no sizes.
    """
    found: list[tuple[int, Path]] = []
    with os.scandir(root) as it:
        for entry in it:
            step = parse_step(entry.name)
            if step is not None and entry.is_dir(follow_symlinks=False):
                found.append((step, Path(entry.path)))
    return sorted(found)


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
        or any(_PP_RE.fullmatch(name) for name in names)
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


def recorded_pp_stages(step_dir: Path) -> int | None:
    """The number of pipeline stages recorded in ``metadata.json``, if any."""
    return pp_stages_of(read_metadata_json(step_dir).data)
