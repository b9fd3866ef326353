"""The on-disk format of a checkpoint root: the one module that knows names and markers.

Writers (the manager) and readers (scan, retention, export, the CLI) all go through here::

    <root>/
      latest -> step_1500     relative symlink, swapped atomically
      step_1500/
        .metadata             DCP global metadata, written last: its presence means complete
        __0_0.distcp ...      DCP shards
        pp0/ pp1/ ...         pipeline parallel: one DCP tree per stage, each with .metadata
        train_state.pt        step, tokens_seen, scheduler, dataloader, RNG, extras
        metadata.json         {"step", "tokens_seen", "dynamic_milestone", "checkpoint": {...}}
      .kf-ckpt.lock           advisory lock held while retention plans and deletes
      .kf-trash/              victims are renamed here before they are removed
      .kf-ckpt.cache          scan cache: what complete checkpoints hold (they never change)

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
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_NAME",
    "DCP_METADATA",
    "LATEST_NAME",
    "LOCK_NAME",
    "METADATA_JSON",
    "TRAIN_STATE",
    "TRASH_NAME",
    "Completeness",
    "LatestLink",
    "MetadataRead",
    "assess_complete",
    "check_complete",
    "fsync_dir",
    "list_step_dirs",
    "newest_complete",
    "parse_pp_stage",
    "parse_step",
    "pp_stage_dirs",
    "pp_stages_of",
    "read_latest",
    "read_metadata_json",
    "recorded_pp_stages",
    "resolve_checkpoint",
    "step_dir_name",
    "update_latest",
    "write_bytes_atomic",
    "write_json_atomic",
]

LATEST_NAME = "latest"
LOCK_NAME = ".kf-ckpt.lock"
TRASH_NAME = ".kf-trash"
CACHE_NAME = ".kf-ckpt.cache"
"""The scan cache of a root (JSON, rewritten atomically by ``scan``; safe to delete by hand)."""
DCP_METADATA = ".metadata"
METADATA_JSON = "metadata.json"
TRAIN_STATE = "train_state.pt"

_STEP_RE = re.compile(r"step_(\d+)")
_PP_RE = re.compile(r"pp(\d+)")
_METADATA_MAX_BYTES = 16 * 2**20  # a metadata.json is a few kB; refuse to slurp a huge file
_READ_CHUNK = 2**16


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
        return MetadataRead(data=None, warning=f"no {METADATA_JSON}")
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
    except ValueError as exc:
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: {exc}")
    if not isinstance(data, dict):
        return MetadataRead(data=None, warning=f"corrupt {METADATA_JSON}: not a JSON object")
    return MetadataRead(data=data)


def pp_stages_of(data: Mapping[str, Any] | None) -> int | None:
    """The ``pp_stages`` count a metadata.json document records, if it is a valid integer."""
    stages = (data or {}).get("pp_stages")
    return stages if isinstance(stages, int) and not isinstance(stages, bool) else None


@dataclass(frozen=True, kw_only=True)
class LatestLink:
    """The ``latest`` symlink: the step it names when honoured, else why it is ignored."""

    step: int | None
    target: str | None = None
    warning: str | None = None


def read_latest(root: Path) -> LatestLink:
    """Where ``<root>/latest`` points.

    Honoured only when it is a symlink whose target is a direct child ``step_<N>`` of ``root``
    that is a real directory (not itself a symlink). Anything else (``/etc``, ``..``, a loop, a
    dangling link) is reported and ignored.
    """
    link = root / LATEST_NAME
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return LatestLink(step=None)
    except OSError as exc:
        return LatestLink(step=None, warning=f"{LATEST_NAME} is not a symlink ({exc.strerror})")
    norm = os.path.normpath(target)
    step = parse_step(norm) if os.sep not in norm and not os.path.isabs(target) else None
    if step is None:
        return LatestLink(
            step=None,
            target=target,
            warning=f"{LATEST_NAME} -> {target} is not a step_<N> dir inside the root; ignored",
        )
    candidate = root / norm
    if candidate.is_symlink() or not candidate.is_dir():
        return LatestLink(
            step=None,
            target=target,
            warning=f"{LATEST_NAME} -> {target} is not a directory; ignored",
        )
    return LatestLink(step=step, target=target)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (rename, symlink) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` atomically: write a sibling temp file, fsync, ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Publish a JSON document atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def update_latest(root: Path, step: int) -> None:
    """Point ``<root>/latest`` at ``step_<step>`` atomically (symlink a temp name, then rename)."""
    tmp = root / f".{LATEST_NAME}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(step_dir_name(step), tmp)
    try:
        os.replace(tmp, root / LATEST_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(root)


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


def recorded_pp_stages(step_dir: Path) -> int | None:
    """The number of pipeline stages recorded in ``metadata.json``, if any."""
    return pp_stages_of(read_metadata_json(step_dir).data)


def newest_complete(root: Path) -> Path | None:
    """The newest complete checkpoint directory under ``root``, or None (also for no root)."""
    try:
        dirs = list_step_dirs(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for _, path in reversed(dirs):
        if check_complete(path, pp_stages=recorded_pp_stages(path)).complete:
            return path
    return None


def resolve_checkpoint(src: str | Path, step: int | None = None) -> Path:
    """The complete checkpoint directory that ``src`` (and ``step``) name.

    ``src`` is either one ``step_<N>`` directory, or a checkpoint root; for a root, ``step``
    picks the checkpoint, and by default the newest complete one is used.

    Raises:
        CheckpointRootError: ``src`` does not exist or is not a directory.
        CheckpointNotFoundError: no checkpoint of that step, or no complete one at all.
        CorruptCheckpointError: the named checkpoint is incomplete.
    """
    from kempnerforge.errors import (
        CheckpointNotFoundError,
        CheckpointRootError,
        CorruptCheckpointError,
    )

    path = Path(src)
    if not path.exists():
        raise CheckpointRootError(
            f"{path} does not exist; pass a checkpoint root or a step_<N> dir"
        )
    if not path.is_dir():
        raise CheckpointRootError(
            f"{path} is not a directory; pass a checkpoint root or step_<N> dir"
        )
    own_step = parse_step(path.name)
    is_step_dir = own_step is not None and (
        (path / DCP_METADATA).exists() or (path / METADATA_JSON).exists() or pp_stage_dirs(path)
    )
    if is_step_dir:
        if step is not None and step != own_step:
            raise CheckpointNotFoundError(
                f"{path} is the checkpoint of step {own_step}, not {step}; "
                "drop --step or pass the root"
            )
        target = path
    else:
        if step is None:
            newest = newest_complete(path)
            if newest is None:
                raise CheckpointNotFoundError(
                    f"no complete checkpoint under {path}; run 'kf-ckpt ls {path}'"
                )
            return newest
        matches = [p for s, p in list_step_dirs(path) if s == step]
        if not matches:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {step} under {path}; run 'kf-ckpt ls {path}'"
            )
        target = matches[0]
    status = check_complete(target, pp_stages=recorded_pp_stages(target))
    if not status.complete:
        raise CorruptCheckpointError(
            f"checkpoint {target} is incomplete ({status.reason}); pick a complete one "
            f"with 'kf-ckpt ls {target.parent}'"
        )
    return target
