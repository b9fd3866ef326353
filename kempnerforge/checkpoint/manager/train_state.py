"""``train_state.pt``: step, tokens, scheduler, dataloader, RNG and extras, loaded safely.

The file is a small ``torch.save`` archive that rank 0 writes next to the DCP shards, in upstream
KempnerForge's layout (see :mod:`kempnerforge.checkpoint.manager._format`, re-exported here with
upstream's helpers ``build_train_state``, ``restore_train_state``, ``get_rng_state`` and
``set_rng_state``). Loading it must never run code from the file, so it is read with
``torch.load(weights_only=True)``: RNG states are tuples, ints and tensors, and the only
non-tensor globals admitted are the numpy pieces of the numpy RNG state (:data:`NUMPY_ALLOWLIST`).
Before a byte is unpickled, the file must be a regular file (not a symlink) owned by the current
user; a group- or world-writable file loads with a warning.

Example:
    >>> save_train_state(path, build_train_state(10, 40960, extra={"phase": 2}))  # doctest: +SKIP
    >>> restore_train_state(load_train_state(path))  # doctest: +SKIP
    (10, 40960, {'phase': 2})
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kempnerforge.checkpoint.manager._format import (
    RNG_EXTENSION_KEY,
    STANDARD_KEYS,
    TRAIN_STATE_VERSION,
    SavedTrainState,
    build_train_state,
    check_extra_keys,
    compose_train_state,
    extras_of,
    get_rng_state,
    parse_train_state,
    restore_train_state,
    set_rng_state,
)
from kempnerforge.checkpoint.manager._load import LOADABLE_KEYS
from kempnerforge.checkpoint.store.files import write_bytes_atomic
from kempnerforge.errors import ConfigError, CorruptCheckpointError

__all__ = [
    "LOADABLE_KEYS",
    "NUMPY_ALLOWLIST",
    "RNG_EXTENSION_KEY",
    "STANDARD_KEYS",
    "TRAIN_STATE_VERSION",
    "InsecureFileWarning",
    "SavedTrainState",
    "build_train_state",
    "check_extra_keys",
    "check_frozen",
    "compose_train_state",
    "extras_of",
    "get_rng_state",
    "load_train_state",
    "parse_train_state",
    "restore_train_state",
    "save_train_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


class InsecureFileWarning(UserWarning):
    """A checkpoint file others could have modified was loaded."""


def _numpy_allowlist() -> list[Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    # Numeric dtype classes only: what RNG states and plain numeric arrays need, nothing more.
    numeric: tuple[type[Any], ...] = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8)
    numeric += (np.uint16, np.uint32)
    numeric += (np.uint64, np.float16, np.float32, np.float64)
    return [
        # Files written under numpy 1.x and 2.x name the same function by different paths.
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in numeric),
    ]


NUMPY_ALLOWLIST: list[Any] = _numpy_allowlist()
"""Globals ``torch.load(weights_only=True)`` may resolve besides torch's own: numpy arrays only."""


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """Publish ``state`` at ``path`` atomically, refusing anything a safe load would reject.

    The archive is serialised in memory and loaded back with ``weights_only=True`` first, so an
    ``extra`` value that could not be restored fails now, at save time, not days later at resume.

    Raises:
        TypeError: ``state`` holds an object that ``weights_only`` loading does not allow.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    try:
        _safe_load(io.BytesIO(data))
    except pickle.UnpicklingError as exc:
        raise TypeError(
            f"cannot save {path.name}: it holds an object that a safe (weights_only) load "
            f"rejects; keep extra/scheduler/dataloader state to tensors, numbers, strings, "
            f"lists and dicts ({_first_line(exc)})"
        ) from exc
    write_bytes_atomic(path, data)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a ``train_state.pt`` without executing anything stored in it.

    Raises:
        PermissionError: ``path`` is a symlink, not a regular file, or owned by another user;
            checked on the open file before a byte is unpickled.
        CorruptCheckpointError: the file is missing, damaged, or holds objects outside the
            allowlist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(
            f"{path} is missing: the checkpoint is damaged or was not written by KempnerForge; "
            f"resume from another one"
        ) from exc
    except OSError as exc:
        if path.is_symlink():
            raise PermissionError(
                f"refusing to load {path}: it is a symlink; replace it with the real file"
            ) from exc
        raise
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        _check_trusted(path, info)
        try:
            state = _safe_load(fh)
        except pickle.UnpicklingError as exc:
            raise CorruptCheckpointError(
                f"refusing to load {path}: it holds objects a safe (weights_only) load does not "
                f"allow, so it was not unpickled ({_first_line(exc)}); restore it from a trusted "
                f"copy or resume from another checkpoint"
            ) from exc
        except (RuntimeError, EOFError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"{path} is damaged ({_first_line(exc)}); resume from another checkpoint"
            ) from exc
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path} does not hold a dict; resume from another checkpoint")
    return state


def _check_trusted(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise PermissionError(f"refusing to load {path}: not a regular file")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise PermissionError(
            f"refusing to load {path}: owned by uid {info.st_uid}, not by you (uid {uid}); "
            f"a file written by someone else could run code when loaded. Check where it came "
            f"from, then 'chown' it to yourself"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        warnings.warn(
            f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"loading it anyway with weights_only=True; run 'chmod go-w {path}'",
            InsecureFileWarning,
            stacklevel=3,
        )


def _safe_load(fh: Any) -> Any:
    with torch.serialization.safe_globals(NUMPY_ALLOWLIST):
        return torch.load(fh, map_location="cpu", weights_only=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # torch's UnpicklingError text is a long tutorial; the offending global is on its last line.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith(("Unsupported", "WeightsUnpickler error")):
            # Drop torch's advice to allowlist the global "if you trust" it: we do not.
            return line.split(". Please use")[0]
    return lines[0] if lines else type(exc).__name__


def check_frozen(saved: list[str] | None, current: list[str], ignore_mismatch: bool) -> bool:
    """Compare frozen parameter names; True when they differ and a partial load is allowed.

    Raises:
        ConfigError: they differ and ``checkpoint.ignore_freeze_mismatch`` is off.
    """
    if saved is None or sorted(saved) == sorted(current):
        return False
    if not ignore_mismatch:
        diff = sorted(set(saved) ^ set(current))
        raise ConfigError(
            f"the checkpoint and the model disagree on which parameters are frozen "
            f"({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''}); set "
            f"checkpoint.ignore_freeze_mismatch=true to load what matches"
        )
    logger.warning("frozen parameters differ from the checkpoint; loading what matches")
    return True
