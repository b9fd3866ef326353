"""What ``train_state.pt`` holds: upstream KempnerForge's layout, read and written both ways.

Upstream's file is ``{"step", "tokens_seen", "rng", "scheduler"?, "dataloader"?, **extra}``: the
caller's extras sit at the top level, and every key that is not one of :data:`STANDARD_KEYS` is
an extra. We write exactly that, so that upstream's resume of our file restores everything and
returns exactly the extras that were saved. What we add (every rank's RNG and dataloader state,
the frozen parameter names, a format version) lives under one reserved key *inside* ``rng``
(:data:`RNG_EXTENSION_KEY`), which upstream's ``set_rng_state`` never looks at.

RNG states use upstream's key names (``python``, ``numpy``, ``torch_cpu``, ``torch_cuda``) and the
types its setters take: ``random.setstate`` needs a tuple, ``np.random.set_state`` the legacy
tuple. All of it loads with ``torch.load(weights_only=True)`` through our numpy allowlist.

Example:
    >>> state = build_train_state(10, 40960, extra={"phase": 2})  # doctest: +SKIP
    >>> step, tokens_seen, extra = restore_train_state(state)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "RNG_EXTENSION_KEY",
    "STANDARD_KEYS",
    "TRAIN_STATE_VERSION",
    "SavedTrainState",
    "build_train_state",
    "check_extra_keys",
    "compose_train_state",
    "extras_of",
    "get_rng_state",
    "parse_train_state",
    "restore_train_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

STANDARD_KEYS = ("step", "tokens_seen", "rng", "scheduler", "dataloader")
"""The keys of ``train_state.pt`` that are not extras (upstream's rule): reserved for extras."""

RNG_EXTENSION_KEY = "kempnerforge"
"""The key inside ``rng`` that holds what we add to upstream's layout."""

TRAIN_STATE_VERSION = 2
"""Version of what :data:`RNG_EXTENSION_KEY` holds (1: the pre-upstream layout, read too)."""


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states, as upstream KempnerForge captures them.

    ``python`` (``random.getstate()``), ``numpy`` (the legacy ``np.random.get_state()`` tuple),
    ``torch_cpu``, and ``torch_cuda`` when CUDA is available.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=True),
        "torch_cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`get_rng_state` (or upstream's copy of it).

    Also takes the forms our files had before they followed upstream (``python`` as a list,
    ``numpy`` as a dict, ``torch``/``cuda`` keys). Missing entries are left alone.
    """
    python = state.get("python")
    if python is not None:
        version, internal, gauss_next = python
        random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, Mapping):  # our format 1
        np.random.set_state(
            (
                numpy_state["bit_generator"],
                np.asarray(numpy_state["key"], dtype=np.uint32),
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["gauss"]),
            )
        )
    elif numpy_state is not None:
        np.random.set_state(tuple(numpy_state))
    cpu = state.get("torch_cpu", state.get("torch"))
    if cpu is not None:
        torch.random.set_rng_state(cpu)
    cuda = state.get("torch_cuda", state.get("cuda"))
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def check_extra_keys(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra`` as a dict, after checking that no key collides with :data:`STANDARD_KEYS`.

    Raises:
        ValueError: an extra is named like a standard entry (it would overwrite it on disk) or
            its key is not a string.
    """
    extra = dict(extra or {})
    bad = [key for key in extra if not isinstance(key, str)]
    if bad:
        raise ValueError(f"extra keys must be strings, got {bad[0]!r}")
    clash = [key for key in extra if key in STANDARD_KEYS]
    if clash:
        raise ValueError(
            f"extra key {clash[0]!r} is reserved in train_state.pt (reserved: "
            f"{', '.join(STANDARD_KEYS)}); rename it, e.g. to 'user_{clash[0]}'"
        )
    return extra


def build_train_state(
    step: int,
    tokens_seen: int,
    scheduler: Any | None = None,
    dataloader: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The non-distributed training state, as upstream KempnerForge builds it.

    ``step``, ``tokens_seen``, this process's ``rng``, ``scheduler`` (when given), ``dataloader``
    (when given and it has ``state_dict``), and the ``extra`` keys at the top level.

    Raises:
        ValueError: an ``extra`` key collides with a standard key (upstream let it overwrite).
    """
    extras = check_extra_keys(extra)
    state: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen, "rng": get_rng_state()}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if dataloader is not None and hasattr(dataloader, "state_dict"):
        state["dataloader"] = dataloader.state_dict()
    state.update(extras)
    return state


def restore_train_state(
    state: Mapping[str, Any], scheduler: Any | None = None, dataloader: Any | None = None
) -> tuple[int, int, dict[str, Any]]:
    """Restore RNG, scheduler and dataloader from ``state``; return ``(step, tokens_seen, extra)``.

    Upstream's semantics: a part missing from ``state`` (or a ``dataloader`` without
    ``load_state_dict``) is skipped; ``extra`` is every non-standard key (see :func:`extras_of`).
    """
    if state.get("rng") is not None:
        set_rng_state(state["rng"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    has_loader_state = state.get("dataloader") is not None
    if dataloader is not None and has_loader_state and hasattr(dataloader, "load_state_dict"):
        dataloader.load_state_dict(state["dataloader"])
    return int(state.get("step", 0)), int(state.get("tokens_seen", 0)), extras_of(state)


def _is_format_1(state: Mapping[str, Any]) -> bool:
    """Our files before they followed upstream: extras under ``extra``, additions top-level."""
    return (
        type(state.get("format_version")) is int
        and isinstance(state.get("extra"), dict)
        and "ranks" in state
    )


def extras_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's extras: every key that is not one of :data:`STANDARD_KEYS` (upstream's rule).

    For our files written before the upstream layout (format 1), the ``extra`` entry.
    """
    if _is_format_1(state):
        return dict(state["extra"])
    return {key: value for key, value in state.items() if key not in STANDARD_KEYS}


def compose_train_state(
    *,
    step: int,
    tokens_seen: int,
    scheduler_state: dict[str, Any] | None,
    ranks: list[dict[str, Any]],
    frozen_params: list[str],
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``train_state.pt`` the manager writes: upstream's layout, with rank 0's copies at the
    top level and every rank's ``{"rng", "dataloader"}`` (``ranks``) inside ``rng``.

    Raises:
        ValueError: an ``extra`` key collides with a standard key.
    """
    extras = check_extra_keys(extra)
    rng = dict(ranks[0]["rng"])
    rng[RNG_EXTENSION_KEY] = {
        "version": TRAIN_STATE_VERSION,
        "frozen_params": list(frozen_params),
        "ranks": ranks,
    }
    state: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen, "rng": rng}
    if scheduler_state is not None:
        state["scheduler"] = scheduler_state
    if ranks[0].get("dataloader") is not None:
        state["dataloader"] = ranks[0]["dataloader"]
    state.update(extras)
    return state


@dataclass(frozen=True, kw_only=True)
class SavedTrainState:
    """A loaded ``train_state.pt`` as one rank of a resume needs it, whoever wrote it."""

    step: int | None
    tokens_seen: int
    scheduler: Any
    rng: Mapping[str, Any] | None
    """This rank's RNG states (rank 0's when the world size changed, or for upstream files)."""
    dataloader: Any
    """This rank's dataloader state, likewise."""
    extra: dict[str, Any]
    frozen_params: list[str] | None
    """None when the file does not record them (upstream's files)."""


def parse_train_state(state: Mapping[str, Any], rank: int, world_size: int) -> SavedTrainState:
    """What ``rank`` of ``world_size`` restores from a loaded ``train_state.pt``.

    Each rank's own RNG and dataloader state when the file was written by the same number of
    ranks; otherwise (or for upstream files, which keep one copy) the top-level copy, rank 0's.
    """
    rng = state.get("rng")
    ours = rng.get(RNG_EXTENSION_KEY) if isinstance(rng, Mapping) else None
    if isinstance(ours, Mapping):
        ranks, frozen = ours.get("ranks"), ours.get("frozen_params")
    else:  # format 1 kept these at the top level; upstream files have neither
        ranks, frozen = state.get("ranks"), state.get("frozen_params")
    own_rng: Any = rng
    own_loader = state.get("dataloader")
    if isinstance(ranks, list) and len(ranks) == world_size and 0 <= rank < world_size:
        own_rng, own_loader = ranks[rank].get("rng"), ranks[rank].get("dataloader")
    elif isinstance(ranks, list):
        logger.warning(
            "saved by %d ranks, loaded by %d: rank %d restores rank 0's RNG and dataloader state",
            len(ranks),
            world_size,
            rank,
        )
    step = state.get("step")
    return SavedTrainState(
        step=int(step) if isinstance(step, int | torch.Tensor) else None,
        tokens_seen=int(state.get("tokens_seen") or 0),
        scheduler=state.get("scheduler"),
        rng=own_rng if isinstance(own_rng, Mapping) else None,
        dataloader=own_loader,
        extra=extras_of(state),
        frozen_params=list(frozen) if isinstance(frozen, list) else None,
    )
