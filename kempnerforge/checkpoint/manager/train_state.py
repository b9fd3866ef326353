"""``train_state.pt``: step, tokens, scheduler, dataloader, RNG and extras, loaded safely.

The file is a small ``torch.save`` archive that rank 0 writes next to the DCP shards. Loading it
must never run code from the file, so it is read with ``torch.load(weights_only=True)``: RNG states
are stored as tensors, ints and lists, and the only non-tensor globals admitted are the numpy
pieces that upstream KempnerForge files use for the numpy RNG state (:data:`NUMPY_ALLOWLIST`).
Before a byte is unpickled, the file must be a regular file (not a symlink) owned by the current
user; a group- or world-writable file loads with a warning.

Example:
    >>> save_train_state(path, {"step": 10, "rng": capture_rng_state()})  # doctest: +SKIP
    >>> restore_rng_state(load_train_state(path)["rng"])  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kempnerforge.checkpoint.store.files import write_bytes_atomic
from kempnerforge.errors import ConfigError, CorruptCheckpointError

__all__ = [
    "LOADABLE_KEYS",
    "NUMPY_ALLOWLIST",
    "InsecureFileWarning",
    "capture_rng_state",
    "check_frozen",
    "excluded_parts",
    "load_train_state",
    "restore_rng_state",
    "save_train_state",
    "select_rank_state",
]

logger = logging.getLogger(__name__)

LOADABLE_KEYS = ("model", "optimizer", "scheduler", "dataloader", "rng")
"""The parts of a checkpoint a resume can skip (``exclude_keys``, ``exclude_from_loading``)."""


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


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, CUDA device) as plain values."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; also takes upstream tuple/ndarray forms."""
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, dict):
        key = np.asarray(numpy_state["key"], dtype=np.uint32)
        np.random.set_state(
            (
                numpy_state["bit_generator"],
                key,
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["gauss"]),
            )
        )
    elif numpy_state is not None:  # upstream: the legacy tuple with an ndarray key
        np.random.set_state(tuple(numpy_state))
    cpu = state.get("torch", state.get("torch_cpu"))
    if cpu is not None:
        torch.random.set_rng_state(cpu)
    cuda = state.get("cuda", state.get("torch_cuda"))
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


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


def select_rank_state(train_state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """The RNG and dataloader state meant for ``rank`` out of a loaded train state.

    Each rank's own entry when the checkpoint was written by the same number of ranks; otherwise
    (or for upstream files, which keep one copy) the top-level copy, which is rank 0's.
    """
    per_rank = train_state.get("ranks")
    if isinstance(per_rank, list) and len(per_rank) == world_size and 0 <= rank < world_size:
        entry = per_rank[rank]
        return {"rng": entry.get("rng"), "dataloader": entry.get("dataloader")}
    if isinstance(per_rank, list):
        logger.warning(
            "saved by %d ranks, loaded by %d: rank %d restores rank 0's RNG and dataloader state",
            len(per_rank),
            world_size,
            rank,
        )
    return {"rng": train_state.get("rng"), "dataloader": train_state.get("dataloader")}


def excluded_parts(keys: list[str]) -> set[str]:
    """``keys`` as a set, after checking each names one of :data:`LOADABLE_KEYS`.

    Raises:
        ConfigError: an unknown key (a typo must not silently load everything).
    """
    unknown = [key for key in keys if key not in LOADABLE_KEYS]
    if unknown:
        raise ConfigError(
            f"cannot exclude {unknown[0]!r} from loading; valid keys: {', '.join(LOADABLE_KEYS)}"
        )
    return set(keys)


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
