"""Background checkpoint flushes: stage into host memory, then let DCP write from a thread.

:class:`AsyncCheckpointer` keeps at most one flush in flight. :meth:`~AsyncCheckpointer.stage`
copies the state dict into host memory (so training may change the model at once) and
:meth:`~AsyncCheckpointer.start` hands the staged copy to DCP's background thread. The two are
separate calls so that the manager can make every rank agree that staging succeeded everywhere
before any rank starts a flush: a flush one rank started while another failed to stage would wait
in DCP's collectives for a rank that never comes. The staging buffers are kept and reused by the
next save; with ``pinned=True`` they are page-locked for fast device-to-host copies (CUDA only).

Example:
    >>> checkpointer = AsyncCheckpointer(process_group=gloo_group)  # doctest: +SKIP
    >>> staged = checkpointer.stage(state_dict)  # a host copy; training goes on  # doctest: +SKIP
    >>> checkpointer.start(staged, checkpoint_id=path, step=100)  # the flush runs  # doctest: +SKIP
    >>> checkpointer.wait()  # the flush is durable (raises if it failed)  # doctest: +SKIP
    100
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import AsyncStager, DefaultStager, StagingOptions

from kempnerforge.checkpoint.export._dcp_failure import describe_failure
from kempnerforge.errors import CheckpointSaveError

__all__ = ["AsyncCheckpointer", "PendingSave"]

logger = logging.getLogger(__name__)

_warned_no_pinning = False


@dataclass(frozen=True, kw_only=True)
class PendingSave:
    """A background flush that has been started and not yet awaited."""

    step: int
    path: Path
    future: Future[Any]


def _warn_no_pinning_once() -> None:
    global _warned_no_pinning
    if not _warned_no_pinning:
        _warned_no_pinning = True
        warnings.warn(
            "checkpoint.async_mode='async_with_pinned_mem' needs CUDA for pinned host memory; "
            "CUDA is not available, so checkpoints are staged in ordinary memory (like 'async')",
            RuntimeWarning,
            stacklevel=3,
        )


class AsyncCheckpointer:
    """Writes DCP checkpoints in the background, one at a time.

    Args:
        process_group: Group for DCP's collectives; it must have a CPU (gloo) backend and must not
            be used by anything else while a flush runs. ``None`` when torch.distributed is not
            initialised (single process).
        pinned: Stage through pinned host memory. Without CUDA this warns once and stages in
            ordinary memory.
    """

    def __init__(
        self, *, process_group: dist.ProcessGroup | None = None, pinned: bool = False
    ) -> None:
        use_pinned = pinned and torch.cuda.is_available()
        if pinned and not use_pinned:
            _warn_no_pinning_once()
        self.pinned = use_pinned
        self._group = process_group
        # Synchronous staging: the copy is complete when save() returns, which is what lets the
        # caller mutate parameters right away. Non-blocking device copies need an accelerator.
        self._stager = DefaultStager(
            StagingOptions(
                use_pinned_memory=use_pinned,
                use_shared_memory=False,
                use_async_staging=False,
                use_non_blocking_copy=torch.accelerator.is_available(),
            )
        )
        self._pending: PendingSave | None = None
        if process_group is None:
            # Single process: DCP's flush thread warns on every save that it assumes exactly that.
            warnings.filterwarnings("ignore", message="torch.distributed is .*uninitialized")

    @property
    def pending(self) -> PendingSave | None:
        """The flush in flight, if any."""
        return self._pending

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A host-memory copy of ``state_dict`` (reusing the staging buffers).

        Raises:
            RuntimeError: a previous flush has not been awaited with :meth:`wait`; the staging
                buffers are still being written, so they cannot be reused yet.
        """
        if self._pending is not None:
            raise RuntimeError(
                f"the flush of step {self._pending.step} is still pending; call wait() first"
            )
        staged = self._stager.stage(state_dict)
        if isinstance(staged, Future):  # only with asynchronous staging, which we do not ask for
            staged = staged.result()
        return staged

    def start(self, staged: dict[str, Any], *, checkpoint_id: Path, step: int) -> PendingSave:
        """Start writing a state dict returned by :meth:`stage` to ``checkpoint_id``."""
        if self._pending is not None:
            raise RuntimeError(
                f"the flush of step {self._pending.step} is still pending; call wait() first"
            )
        future = dcp.async_save(
            staged,
            checkpoint_id=str(checkpoint_id),
            process_group=self._group,
            async_stager=_AlreadyStaged(),
        )
        # With a stager and no staging future requested, DCP returns a plain Future.
        if not isinstance(future, Future):
            raise TypeError(f"dcp.async_save returned {type(future).__name__}, not a Future")
        self._pending = PendingSave(step=step, path=Path(checkpoint_id), future=future)
        logger.debug("staged step %d; flushing to %s in the background", step, checkpoint_id)
        return self._pending

    def save(self, state_dict: dict[str, Any], *, checkpoint_id: Path, step: int) -> PendingSave:
        """:meth:`stage`, then :meth:`start` (one process, or ranks that agree by other means)."""
        return self.start(self.stage(state_dict), checkpoint_id=checkpoint_id, step=step)

    def wait(self) -> int | None:
        """Block until the pending flush is durable; its step, or None when nothing was pending.

        Raises:
            CheckpointSaveError: the flush failed; its directory is left incomplete.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        try:
            pending.future.result()
        except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
            raise CheckpointSaveError(
                f"background save of step {pending.step} to {pending.path} failed "
                f"({describe_failure(exc)}); it is incomplete and 'latest' was not moved to it"
            ) from exc
        return pending.step

    def close(self) -> None:
        """Wait for the pending flush (if any), then release the staging buffers."""
        try:
            self.wait()
        finally:
            self._stager.close()


class _AlreadyStaged(AsyncStager):
    """Hands DCP a state dict that :meth:`AsyncCheckpointer.stage` has already copied."""

    _synchronize_after_execute = False

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict

    def synchronize_staging(self) -> None:
        return None

    def close(self) -> None:
        return None
