"""Checkpoint configuration."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from kempnerforge.config.registry import registry

__all__ = ["AsyncCheckpointMode", "CheckpointConfig", "DynamicCheckpointWindow"]


class AsyncCheckpointMode(StrEnum):
    """How :class:`~kempnerforge.checkpoint.manager.CheckpointManager` writes a checkpoint.

    ``disabled`` saves synchronously; ``async`` flushes in the background with
    ``torch.distributed.checkpoint.async_save``; ``async_with_pinned_mem`` also stages the state
    through pinned host memory (CUDA only; elsewhere it behaves like ``async``).
    """

    disabled = "disabled"
    async_ = "async"
    async_pinned = "async_with_pinned_mem"


POWER2 = "power2"
"""The built-in window strategy (the default): ``start`` and every ``start + 2^k``."""


@registry.register_dyn_ckpt_strategy(POWER2)
def _power2(window: DynamicCheckpointWindow, step: int) -> bool:
    """Save at ``start`` and at every ``start + 2^k`` that is ``<= stop``."""
    offset = step - window.start
    if offset < 0 or step > window.stop:
        return False
    return offset == 0 or (offset & (offset - 1)) == 0


def _require_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


@dataclass
class DynamicCheckpointWindow:
    """A bounded step range with a registered checkpoint strategy.

    Inside ``[start, stop]`` the strategy decides which steps to save, and every such step is
    exempt from :attr:`CheckpointConfig.keep_last_n` retention. Outside the window the regular
    :attr:`CheckpointConfig.interval` cadence applies.

    ``"power2"`` (default) saves at ``start`` and at every ``start + 2^k`` while ``<= stop`` --
    tight at the start of the window, doubling thereafter. New strategies register via
    ``@registry.register_dyn_ckpt_strategy(name)`` and become selectable by setting ``strategy``.
    """

    start: int = 0
    """First step of the window (inclusive, ``>= 0``)."""

    stop: int = 512
    """Last step of the window (inclusive, ``>= start``)."""

    strategy: str = POWER2
    """Name of a registered strategy (see :mod:`kempnerforge.config.registry`)."""

    def __post_init__(self) -> None:
        _require_int("checkpoint.dyn_ckpt_window.start", self.start)
        _require_int("checkpoint.dyn_ckpt_window.stop", self.stop)
        if self.start < 0:
            raise ValueError(f"checkpoint.dyn_ckpt_window.start must be >= 0, got {self.start}")
        if self.stop < self.start:
            raise ValueError(
                f"checkpoint.dyn_ckpt_window.stop must be >= start ({self.start}), got {self.stop}"
            )
        if self.strategy not in registry.list_dyn_ckpt_strategies():
            known = ", ".join(repr(n) for n in registry.list_dyn_ckpt_strategies())
            # "unknown dyn_ckpt_window.strategy" is upstream KempnerForge's wording: code that
            # matches on it keeps working.
            raise ValueError(
                f"unknown dyn_ckpt_window.strategy {self.strategy!r}: "
                f"checkpoint.dyn_ckpt_window.strategy must be a registered strategy ({known})"
            )

    def contains(self, step: int) -> bool:
        """Whether ``step`` lies inside ``[start, stop]``."""
        return self.start <= step <= self.stop

    def is_milestone(self, step: int) -> bool:
        """Whether the strategy saves at ``step`` (always False outside the window)."""
        if not self.contains(step):
            return False
        return bool(registry.get_dyn_ckpt_strategy(self.strategy)(self, step))


@dataclass
class CheckpointConfig:
    """Checkpointing settings."""

    dir: str = "checkpoints"
    """Root directory of the run's checkpoints; each save writes ``<dir>/step_<N>/``."""

    interval: int = 1000
    """Save every ``interval`` steps outside the dynamic window (``> 0``)."""

    dyn_ckpt_window: DynamicCheckpointWindow | None = None
    """Optional dense window early in training whose saves are kept forever."""

    async_mode: AsyncCheckpointMode = AsyncCheckpointMode.disabled
    """Synchronous saves, or background flushes (``async``, ``async_with_pinned_mem``)."""

    keep_last_n: int = 3
    """How many recent complete non-milestone checkpoints retention keeps; ``<= 0`` keeps all."""

    load_path: str | None = None
    """Checkpoint to resume from (a ``step_N`` directory); ``None`` follows ``<dir>/latest``."""

    export_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Floating-point dtype of ``kf-ckpt export`` output when ``--dtype`` is not given."""

    exclude_from_loading: list[str] = field(default_factory=list)
    """Top-level state keys (e.g. ``"optimizer"``) that :meth:`CheckpointManager.load` skips."""

    ignore_freeze_mismatch: bool = False
    """Load even when the saved and current models disagree on which parameters are frozen."""

    def __post_init__(self) -> None:
        if not isinstance(self.dir, str) or not self.dir:
            raise ValueError(f"checkpoint.dir must be a non-empty string, got {self.dir!r}")
        _require_int("checkpoint.interval", self.interval)
        if self.interval <= 0:
            raise ValueError(f"checkpoint.interval must be positive, got {self.interval}")
        if isinstance(self.dyn_ckpt_window, dict):
            self.dyn_ckpt_window = DynamicCheckpointWindow(**self.dyn_ckpt_window)
        if self.dyn_ckpt_window is not None and not isinstance(
            self.dyn_ckpt_window, DynamicCheckpointWindow
        ):
            raise ValueError(
                "checkpoint.dyn_ckpt_window must be a DynamicCheckpointWindow or None, "
                f"got {self.dyn_ckpt_window!r}"
            )
        try:
            self.async_mode = AsyncCheckpointMode(self.async_mode)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in AsyncCheckpointMode)
            raise ValueError(
                f"checkpoint.async_mode must be one of {valid}, got {self.async_mode!r}"
            ) from None
        _require_int("checkpoint.keep_last_n", self.keep_last_n)
        if self.load_path is not None and (
            not isinstance(self.load_path, str) or not self.load_path
        ):
            raise ValueError(
                f"checkpoint.load_path must be a non-empty string or None, got {self.load_path!r}"
            )
        if self.export_dtype not in EXPORT_DTYPES:
            raise ValueError(
                f"checkpoint.export_dtype must be one of {', '.join(map(repr, EXPORT_DTYPES))}, "
                f"got {self.export_dtype!r}"
            )
        if isinstance(self.exclude_from_loading, str | bytes) or not all(
            isinstance(k, str) for k in self.exclude_from_loading
        ):
            raise ValueError(
                "checkpoint.exclude_from_loading must be a list of strings, "
                f"got {self.exclude_from_loading!r}"
            )
        self.exclude_from_loading = list(self.exclude_from_loading)
        if not isinstance(self.ignore_freeze_mismatch, bool):
            raise ValueError(
                "checkpoint.ignore_freeze_mismatch must be true or false, "
                f"got {self.ignore_freeze_mismatch!r}"
            )

    def should_save(self, step: int) -> bool:
        """Whether to write a checkpoint at ``step``.

        Inside ``dyn_ckpt_window``: the registered strategy decides (default ``"power2"`` saves
        at ``start`` and each ``start + 2^k`` while ``<= stop``). Outside the window: every
        ``interval`` steps. Dynamic milestones are exempt from ``keep_last_n`` (see
        ``CheckpointManager._cleanup``).
        """
        step = _require_int("step", step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        window = self.dyn_ckpt_window
        if window is not None and window.contains(step):
            return window.is_milestone(step)
        return step % self.interval == 0

    def is_dynamic_milestone(self, step: int) -> bool:
        """True if ``step`` is a milestone of the configured ``dyn_ckpt_window``.

        ``CheckpointManager._cleanup`` excludes these from ``keep_last_n`` so the dense
        early-window checkpoints survive a finite retention.
        """
        window = self.dyn_ckpt_window
        return window is not None and window.is_milestone(step)


EXPORT_DTYPES: tuple[str, ...] = tuple(
    sorted(typing.get_args(typing.get_type_hints(CheckpointConfig)["export_dtype"]))
)
"""The dtypes an export may write, read from the ``export_dtype`` annotation (its one spelling)."""
