"""The gloo groups that checkpoint collectives run on, each collective bounded by a timeout.

DCP's flush runs collectives in its own thread, so it needs a process group of its own with a
CPU backend (gloo): sharing a group with the training loop would interleave collectives from two
threads in a different order on different ranks. :class:`CheckpointGroups` creates that group and
a second one for the manager's own fences, whatever the backend of the training's groups.

Both groups are created with the manager's collective timeout: a rank that died (or hangs) turns
into a :class:`~kempnerforge.errors.CheckpointSaveError` on the others after that many seconds,
instead of gloo's default half hour of silence.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kempnerforge.checkpoint.export._dcp_failure import describe_failure
from kempnerforge.errors import CheckpointSaveError, KempnerForgeError

__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "CheckpointGroups",
    "LostPeerError",
    "dedicated_gloo_group",
]

COLLECTIVE_TIMEOUT_S = 600.0
"""Default bound on every collective of the manager (and of DCP in its group), in seconds."""


class LostPeerError(CheckpointSaveError):
    """A collective of the manager timed out or its connection broke: a rank died or hangs.

    Saving again cannot succeed (the group is broken); the job should stop and be restarted.
    """


def dedicated_gloo_group(
    group: dist.ProcessGroup | None, *, via: dist.ProcessGroup, timeout: timedelta
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
        created = dist.new_group(ranks=list(members), backend="gloo", timeout=timeout)
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

    Args:
        process_group: The ranks that write one DCP tree together (default: all ranks).
        timeout_s: Bound on every collective of both groups.
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        timeout_s: float = COLLECTIVE_TIMEOUT_S,
    ) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.timeout_s = timeout_s
        self.fence_group: dist.ProcessGroup | None = None
        self.dcp_group: dist.ProcessGroup | None = None
        if self.distributed:
            timeout = timedelta(seconds=timeout_s)
            self.fence_group = dist.new_group(backend="gloo", timeout=timeout)
            self.dcp_group = dedicated_gloo_group(
                process_group, via=self.fence_group, timeout=timeout
            )

    @contextlib.contextmanager
    def _bounded(self, what: str) -> Iterator[None]:
        """Turn a collective that timed out (a lost peer) into a clear CheckpointSaveError."""
        try:
            yield
        except RuntimeError as exc:  # gloo's timeout and a closed connection (DistBackendError)
            raise LostPeerError(
                f"{what}: another rank did not answer within {self.timeout_s:g} s or went away "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "'latest' not moved; see the other ranks' logs"
            ) from exc

    def fence(self, error: BaseException | None, what: str) -> None:
        """Every rank learns whether any rank failed, and all raise together (none hangs).

        Raises:
            KempnerForgeError: this rank's own ``error`` of that kind, re-raised as is.
            TypeError: likewise (state that a safe load would reject).
            CheckpointSaveError: any other failure, here or on another rank, or a lost peer.
        """
        failed = error is not None
        if self.fence_group is not None:
            flag = torch.tensor([int(failed)])
            with self._bounded(what):
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
        with self._bounded("agreeing on the pipeline stages"):
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.fence_group)
        return int(tensor.item())

    def gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order, on rank 0 (an empty list elsewhere)."""
        if self.fence_group is None:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        with self._bounded(what):
            dist.gather_object(obj, out, dst=0, group=self.fence_group)
        return out or []

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.fence_group is None:
            return obj
        box: list[Any] = [obj]
        with self._bounded(what):
            dist.broadcast_object_list(box, src=0, group=self.fence_group)
        return box[0]

    def share(self, result: Any, what: str) -> Any:
        """Rank 0's ``result`` on every rank; when it is an exception, every rank raises.

        Rank 0 re-raises its own exception; the others raise a CheckpointSaveError naming it.
        """
        result = self.broadcast(result, what)
        if isinstance(result, BaseException):
            if self.rank == 0 or isinstance(result, KempnerForgeError | TypeError):
                raise result
            raise CheckpointSaveError(f"{what} failed on rank 0 ({describe_failure(result)})")
        return result
