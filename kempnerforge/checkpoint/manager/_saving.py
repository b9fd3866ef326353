"""The save path of :class:`~kempnerforge.checkpoint.manager.CheckpointManager`: writing a save.

One save, on every rank: capture each rank's RNG and dataloader state; rank 0 creates the
in-flight directory (with its writer lease) and writes the train state into it; all ranks fence;
DCP writes the tensors (in the async modes: every rank stages, all agree that staging succeeded,
only then does any rank start its flush). Then the finishing half (:mod:`._publishing`): all
ranks agree that the save succeeded; rank 0 publishes it (rename into ``step_<N>``, ``latest``)
and runs retention. Every failure reaches every rank through a fence, and a failed save's
directory is discarded.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from kempnerforge.checkpoint.manager import _save
from kempnerforge.checkpoint.manager._publishing import PublishingMixin
from kempnerforge.checkpoint.manager._save import Stateful
from kempnerforge.checkpoint.manager._tensors import frozen_names, model_state, save_tensors
from kempnerforge.checkpoint.manager.train_state import check_extra_keys
from kempnerforge.checkpoint.store.layout import TRAIN_STATE, step_dir_name
from kempnerforge.checkpoint.store.metrics import checked_metrics

__all__ = ["SavingMixin"]


class SavingMixin(PublishingMixin):
    """``save`` of the manager: the train state, then the tensors (at once, or staged and
    flushed in the background); :class:`PublishingMixin` finishes it."""

    root: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    pp_rank: int | None
    pp_stages: int | None
    world_size: int

    def save(
        self,
        step: int,
        tokens_seen: int = 0,
        scheduler: Stateful | None = None,
        dataloader: Stateful | None = None,
        extra: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Path:
        """Checkpoint ``step`` and return its directory (``<dir>/step_<step>``).

        ``metrics`` (name -> number, e.g. ``{"eval_loss": 2.31}``) are recorded in
        metadata.json for ``kf-ckpt ls --metric``; a non-finite value is recorded as null.
        Pass the same metrics on every rank (rank 0's are recorded).

        In sync mode this returns once the checkpoint is published and ``latest`` names it. In
        the async modes it first finishes the previous background save (a failure of that one
        is logged as an error, and this save goes ahead), then returns once the state is staged
        in host memory; call :meth:`close` (or :meth:`wait`) before the run exits.

        Raises:
            CheckpointSaveError: writing failed on some rank; ``latest`` was not moved.
            SupersededError: another job took over the root; this job should stop.
            TypeError: ``extra``, scheduler or dataloader state holds objects a safe load
                rejects, or a metric is not a number (checked before anything is written).
            ValueError: an ``extra`` key is one of the standard keys of ``train_state.pt``
                (``step``, ``tokens_seen``, ``rng``, ``scheduler``, ``dataloader``).
        """
        recorded_metrics = checked_metrics(metrics)  # on every rank: all refuse, none hangs
        check_extra_keys(extra)  # on every rank, before any collective: all of them raise
        self._finish_previous()
        save_dir = self._begin(step, tokens_seen, scheduler, dataloader, extra, recorded_metrics)
        tree, state = self._tree(save_dir), model_state(self.model, self.optimizer)
        if self._async is not None:
            self._start_flush(step, tree, state)
            return self.root / step_dir_name(step)
        error: BaseException | None = None
        try:
            save_tensors(state, tree, self._groups)
        except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
            error = exc
        self._finalize(step, error)
        return self.root / step_dir_name(step)

    def _begin(
        self,
        step: int,
        tokens_seen: int,
        scheduler: Stateful | None,
        dataloader: Stateful | None,
        extra: dict[str, Any] | None,
        metrics: dict[str, float | int | None],
    ) -> Path:
        """Create the in-flight directory and its train state (rank 0); its path on every rank."""
        mine, error = _save.capture_rank_state(dataloader)
        ranks = self._groups.gather(mine, f"gathering the train state of step {step}")
        if self.rank == 0 and error is None:
            try:
                self._in_flight = self._publisher.begin(step)
                _save.write_train_files(
                    self._in_flight.path,
                    _save.TrainFiles(
                        step=step,
                        tokens_seen=tokens_seen,
                        scheduler=scheduler,
                        extra=extra,
                        frozen=frozen_names(self.model),
                        ranks=ranks,
                        config=self.config,
                        world_size=self.world_size,
                        pp_stages=self.pp_stages,
                        owner=self._publisher.owner,
                        metrics=metrics,
                    ),
                )
            except Exception as exc:  # every rank must hear of it, or the others hang in DCP
                error = exc
        self._fenced(error, f"writing {TRAIN_STATE} of step {step}")
        path = self._in_flight.path if self._in_flight is not None else None
        return self._groups.broadcast(path, f"sharing the directory of step {step}")

    def _start_flush(self, step: int, tree: Path, state: dict[str, Any]) -> None:
        """Stage on every rank, agree that all succeeded, and only then start the flushes."""
        assert self._async is not None
        staged: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            staged = self._async.stage(state)
        except Exception as exc:
            error = exc
        self._fenced(error, f"staging step {step}")
        pending = self._async.start(staged, checkpoint_id=tree, step=step)
        if self._in_flight is not None:
            callback = functools.partial(self._publisher.publish_early, self._in_flight)
            pending.future.add_done_callback(callback)

    def _tree(self, save_dir: Path) -> Path:
        return save_dir if self.pp_rank is None else save_dir / f"pp{self.pp_rank}"
