"""Background checkpoint flushes, and the gloo groups that checkpoint collectives run on.

:class:`AsyncCheckpointer` keeps at most one flush in flight. ``save()`` stages the state dict
into host memory before it returns (so training may change the model at once), then DCP writes the
staged copy from a background thread. The staging buffers are kept and reused by the next save;
with ``pinned=True`` they are page-locked for fast device-to-host copies (CUDA only).

The flush runs collectives in its own thread, so it needs a process group of its own with a CPU
backend (gloo): sharing a group with the training loop would interleave collectives from two
threads in a different order on different ranks. :class:`CheckpointGroups` creates that group and
a second one for the manager's own fences, whatever the backend of the training's groups.

Example:
    >>> checkpointer = AsyncCheckpointer(process_group=gloo_group)  # doctest: +SKIP
    >>> checkpointer.save(state_dict, checkpoint_id=path, step=100)  # returns once staged
    >>> ...  # train on
    >>> checkpointer.wait()  # 100: the flush is durable (raises if it failed)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from kempnerforge.checkpoint.export._dcp_failure import describe_failure
from kempnerforge.errors import CheckpointSaveError, KempnerForgeError

__all__ = [
    "AsyncCheckpointer",
    "CheckpointGroups",
    "PendingSave",
    "dedicated_gloo_group",
]

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

    def save(self, state_dict: dict[str, Any], *, checkpoint_id: Path, step: int) -> None:
        """Stage ``state_dict`` to host memory and start writing it to ``checkpoint_id``.

        Raises:
            RuntimeError: a previous flush has not been awaited with :meth:`wait`; the staging
                buffers are still being written, so they cannot be reused yet.
        """
        if self._pending is not None:
            raise RuntimeError(
                f"the flush of step {self._pending.step} is still pending; call wait() first"
            )
        future = dcp.async_save(
            state_dict,
            checkpoint_id=str(checkpoint_id),
            process_group=self._group,
            async_stager=self._stager,
        )
        # With a stager and no staging future requested, DCP returns a plain Future.
        if not isinstance(future, Future):
            raise TypeError(f"dcp.async_save returned {type(future).__name__}, not a Future")
        self._pending = PendingSave(step=step, path=Path(checkpoint_id), future=future)
        logger.debug("staged step %d; flushing to %s in the background", step, checkpoint_id)

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


def dedicated_gloo_group(
    group: dist.ProcessGroup | None, *, via: dist.ProcessGroup
) -> dist.ProcessGroup:
    """A new gloo group with the ranks of ``group`` (all ranks when None), for DCP alone.

    ``new_group`` is collective over the whole world, so the ranks first exchange their groups'
    members on ``via``; then every rank creates every distinct group, in the same order, and
    keeps the one it belongs to. Works whatever the backend of ``group`` (NCCL included).
    """
    world = dist.get_world_size()
    ranks = list(range(world)) if group is None else dist.get_process_group_ranks(group)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, sorted(ranks), group=via)
    mine: dist.ProcessGroup | None = None
    for members in sorted({tuple(m) for m in everyone}):
        created = dist.new_group(ranks=list(members), backend="gloo")
        if dist.get_rank() in members:
            mine = created
    if mine is None:
        raise RuntimeError(f"rank {dist.get_rank()} is not in its own process group {ranks}")
    return mine


class CheckpointGroups:
    """The ranks of a checkpoint and the collectives the manager runs among them.

    Two dedicated gloo groups: ``fence`` (all ranks; the manager's fences, gathers, broadcasts,
    on the caller's thread) and ``dcp`` (the ranks of ``process_group``; DCP's own collectives,
    possibly from the flush thread). Without torch.distributed every collective is a local no-op.
    Must be created on every rank, in the same order, like any ``new_group``.
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.fence_group: dist.ProcessGroup | None = None
        self.dcp_group: dist.ProcessGroup | None = None
        if self.distributed:
            self.fence_group = dist.new_group(backend="gloo")
            self.dcp_group = dedicated_gloo_group(process_group, via=self.fence_group)

    def fence(self, error: BaseException | None, what: str) -> None:
        """Every rank learns whether any rank failed, and all raise together (none hangs).

        Raises:
            KempnerForgeError: this rank's own ``error`` of that kind, re-raised as is.
            TypeError: likewise (state that a safe load would reject).
            CheckpointSaveError: any other failure, here or on another rank.
        """
        failed = error is not None
        if self.fence_group is not None:
            flag = torch.tensor([int(failed)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.fence_group)
            failed = bool(flag.item())
        if isinstance(error, KempnerForgeError | TypeError):
            raise error
        if error is not None:
            raise CheckpointSaveError(
                f"{what} failed ({describe_failure(error)}); 'latest' not moved"
            ) from error
        if failed:
            raise CheckpointSaveError(
                f"{what} failed on another rank (see its log); 'latest' not moved"
            )

    @contextlib.contextmanager
    def quiet_single_process(self) -> Iterator[None]:
        """Silence DCP's "assuming a single process" warning when that is indeed the intent."""
        with warnings.catch_warnings():
            if not self.distributed:
                warnings.filterwarnings("ignore", message="torch.distributed is .*uninitialized")
            yield

    def all_max(self, value: int) -> int:
        """The largest ``value`` over all ranks."""
        if self.fence_group is None:
            return value
        tensor = torch.tensor([value])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.fence_group)
        return int(tensor.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on rank 0 (an empty list elsewhere)."""
        if self.fence_group is None:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.fence_group)
        return out or []

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.fence_group is None:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0, group=self.fence_group)
        return box[0]
