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
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
    "PendingKind",
    "PendingName",
    "assess_complete",
    "check_complete",
    "guess_step",
    "holds_dcp_checkpoint",
    "inflight_dir_name",
    "list_foreign_checkpoints",
    "list_step_dirs",
    "parse_pending",
    "parse_pp_stage",
    "parse_step",
    "pp_stage_dirs",
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
