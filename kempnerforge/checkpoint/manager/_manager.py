"""CheckpointManager: the DCP save and resume that a training loop calls on every rank.

A save writes ``<dir>/step_N/`` (or ``step_N/pp{k}/`` per pipeline stage): rank 0 first publishes
``train_state.pt`` and ``metadata.json``, all ranks fence on a gloo group, then DCP writes the
model and optimizer shards and, last, its ``.metadata``, the one completeness marker. Only once
that marker is durable does rank 0 move ``latest`` and run a retention round (skipped for the
round when ``kf-ckpt gc`` holds the lock): it renames the victims into ``.kf-trash/`` before
``save()`` returns, and a background thread of rank 0 removes their files
(:mod:`kempnerforge.checkpoint.store.background`); no other rank waits for either. In the async
modes the flush runs in the background: rank 0 moves ``latest`` from the flush thread as soon as
the checkpoint is complete on disk (so a crash between two saves resumes from the newest durable
one), and the retention round runs at the next ``save()``, ``wait()`` or
``flush_pending_save()``.

Example:
    >>> manager = CheckpointManager(config, model, optimizer)  # doctest: +SKIP
    >>> step, tokens_seen, extra = manager.load()  # (0, 0, {}) on a fresh run
    >>> for step in range(step + 1, max_steps + 1):
    ...     tokens_seen += train_step()
    ...     if config.should_save(step):
    ...         manager.save(step, tokens_seen, scheduler=scheduler)
    >>> manager.close()  # finishes a background save and the trash removal
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Collection
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
)

from kempnerforge.checkpoint.manager._files import (
    point_latest,
    prepare_step_dir,
    resolve_resume_dir,
    saved_step,
    write_metadata,
)
from kempnerforge.checkpoint.manager._load import LOADABLE_KEYS, load_dcp_state, plan_exclusions
from kempnerforge.checkpoint.manager._pins import PinsMixin
from kempnerforge.checkpoint.manager.async_save import AsyncCheckpointer, CheckpointGroups
from kempnerforge.checkpoint.manager.train_state import (
    SavedTrainState,
    check_extra_keys,
    check_frozen,
    compose_train_state,
    get_rng_state,
    load_train_state,
    parse_train_state,
    save_train_state,
    set_rng_state,
)
from kempnerforge.checkpoint.store.background import BackgroundRetention
from kempnerforge.checkpoint.store.layout import METADATA_JSON, TRAIN_STATE, step_dir_name
from kempnerforge.checkpoint.store.metrics import checked_metrics
from kempnerforge.config.checkpoint import AsyncCheckpointMode, CheckpointConfig
from kempnerforge.errors import CheckpointSaveError

__all__ = ["CheckpointManager", "Stateful"]

logger = logging.getLogger(__name__)


class Stateful(Protocol):
    """A scheduler or a dataloader: anything with ``state_dict`` and ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


class CheckpointManager(PinsMixin):
    """Saves and restores model, optimizer and train state with torch.distributed.checkpoint.

    Construct it on every rank after ``torch.distributed`` is initialised (any backend: it makes
    its own gloo groups), and call every method on every rank, except :meth:`peek_saved_step`.

    Args:
        config: The run's checkpoint settings (``dir``, ``async_mode``, retention, ...).
        model: The model, plain or sharded with FSDP2 ``fully_shard``.
        optimizer: Its optimizer (moments are saved keyed by parameter name), or None.
        process_group: The ranks that write this DCP tree together (default: all ranks).
        pp_rank: This rank's pipeline stage; each stage writes ``step_N/pp{pp_rank}/``.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        process_group: dist.ProcessGroup | None = None,
        pp_rank: int | None = None,
    ) -> None:
        self.config = config
        self.root = Path(config.dir)
        self.model = model
        self.optimizer = optimizer
        self.pp_rank = pp_rank
        self._groups = CheckpointGroups(process_group)
        self.rank = self._groups.rank
        self.world_size = self._groups.world_size
        self.pp_stages = None if pp_rank is None else self._groups.all_max(pp_rank + 1)
        self._stashed_dataloader: dict[str, Any] | None = None
        # Guards `latest` between the flush-thread callback and the caller's thread; the newest
        # step this manager pointed it at (never moved backwards by a late callback).
        self._latest_lock = threading.Lock()
        self._latest_step: int | None = None
        # Retention runs on rank 0 only; its deletions on a thread of its own (no collectives).
        self._retention = BackgroundRetention(self.root) if self.rank == 0 else None
        self._async: AsyncCheckpointer | None = None
        if config.async_mode is not AsyncCheckpointMode.disabled:
            self._async = AsyncCheckpointer(
                process_group=self._groups.dcp_group,
                pinned=config.async_mode is AsyncCheckpointMode.async_pinned,
            )

    def save(
        self,
        step: int,
        tokens_seen: int = 0,
        scheduler: Stateful | None = None,
        dataloader: Stateful | None = None,
        extra: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Path:
        """Checkpoint ``step`` and return its directory.

        ``metrics`` (name -> number, e.g. ``{"eval_loss": 2.31}``) are recorded in
        metadata.json for ``kf-ckpt ls --metric``; a non-finite value is recorded as null.
        Pass the same metrics on every rank (rank 0's are recorded).

        In sync mode this returns once the checkpoint is complete and ``latest`` names it. In
        the async modes it first finishes the previous background save, then returns as soon as
        the state is staged in host memory; call :meth:`close` (or :meth:`wait`) before the run
        exits, or its last save is left complete on disk but not named by ``latest``.

        Raises:
            CheckpointSaveError: writing failed on some rank; ``latest`` was not moved.
            TypeError: ``extra``, scheduler or dataloader state holds objects a safe load
                rejects, or a metric is not a number (checked before anything is written).
            ValueError: an ``extra`` key is one of the standard keys of ``train_state.pt``
                (``step``, ``tokens_seen``, ``rng``, ``scheduler``, ``dataloader``).
        """
        recorded_metrics = checked_metrics(metrics)  # on every rank: all refuse, none hangs
        step_dir = self.root / step_dir_name(step)
        check_extra_keys(extra)  # on every rank, before any collective: all of them raise
        self.flush_pending_save()
        loader_state = None
        if dataloader is not None and hasattr(dataloader, "state_dict"):
            loader_state = dataloader.state_dict()
        mine = {"rng": get_rng_state(), "dataloader": loader_state}
        ranks = self._groups.gather(mine)
        error: BaseException | None = None
        if self.rank == 0:
            try:
                self._write_rank0(
                    step, step_dir, tokens_seen, scheduler, extra, ranks, recorded_metrics
                )
            except Exception as exc:  # every rank must hear of it, or the others hang in DCP
                error = exc
        self._groups.fence(error, f"writing {TRAIN_STATE} of step {step}")
        target, state = self._tree(step_dir), self._state_dict()
        if self._async is not None:
            try:
                self._async.save(state, checkpoint_id=target, step=step)
                pending = self._async.pending
                if self.rank == 0 and pending is not None:
                    pending.future.add_done_callback(
                        functools.partial(self._advance_latest_early, step)
                    )
            except Exception as exc:
                error = exc
            self._groups.fence(error, f"staging step {step}")
            return step_dir
        try:
            with self._groups.quiet_single_process():
                dcp.save(state, checkpoint_id=str(target), process_group=self._groups.dcp_group)
        except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
            error = exc
        self._finalize(step, error)
        return step_dir

    def flush_pending_save(self) -> int | None:
        """Finish the background save, if any: wait for it, move ``latest``, run retention.

        Returns its step, or None when nothing was pending.

        Raises:
            CheckpointSaveError: the background flush failed; ``latest`` was not moved.
        """
        if self._async is None or self._async.pending is None:
            return None
        step = self._async.pending.step
        error: BaseException | None = None
        try:
            self._async.wait()
        except CheckpointSaveError as exc:
            error = exc
        self._finalize(step, error)
        return step

    def wait(self) -> None:
        """Block until no save is in flight (see :meth:`flush_pending_save`)."""
        self.flush_pending_save()

    def close(self) -> None:
        """Finish a pending save and release the staging buffers; the last call of a run.

        Rank 0 also waits for the background removal of the checkpoints retention deleted
        (at most :data:`~kempnerforge.checkpoint.store.background.CLOSE_WAIT_S` seconds, then
        it logs a warning and leaves the rest to the next run or ``kf-ckpt gc``).
        """
        try:
            self.flush_pending_save()
        finally:
            if self._async is not None:
                self._async.close()
            if self._retention is not None:
                self._retention.close()

    def load(
        self,
        path: str | Path | None = None,
        scheduler: Stateful | None = None,
        dataloader: Stateful | None = None,
        exclude_keys: list[str] | None = None,
    ) -> tuple[int, int, dict[str, Any]]:
        """Resume from ``path``, else ``config.load_path``, else ``<dir>/latest``.

        ``exclude_keys`` (default ``config.exclude_from_loading``) names what not to restore:
        whole parts (``model``, ``optimizer``, ``scheduler``, ``dataloader``, ``rng``) or FQN
        prefixes of model parameters and buffers (``output``, ``layers.31.mlp``), which keep
        their current values and optimizer state. Without ``dataloader``, its state is kept for
        :meth:`apply_dataloader_state`. ``path`` may be any DCP checkpoint directory; one
        written by another tool (no ``train_state.pt``, no ``metadata.json``) gives the model
        weights only and returns step 0. Returns ``(step, tokens_seen, extra)``, where
        ``extra`` is every non-standard key of ``train_state.pt`` (upstream's rule), or
        ``(0, 0, {})`` for a root without checkpoint directories.

        Raises:
            CheckpointNotFoundError: ``path`` or ``config.load_path`` does not exist.
            CorruptCheckpointError: that checkpoint is incomplete, its train state unsafe, or
                the root holds checkpoint directories but none is complete (never a silent
                restart from step 0).
            PermissionError: its ``train_state.pt`` belongs to another user.
            ConfigError: an exclude entry that matches nothing, frozen parameters that differ
                from the save, or model tensors the checkpoint lacks.
        """
        entries = self.config.exclude_from_loading if exclude_keys is None else exclude_keys
        by_fqn = [e for e in entries if e not in LOADABLE_KEYS]
        exclusions = plan_exclusions(
            entries, get_model_state_dict(self.model).keys() if by_fqn else ()
        )
        excluded = exclusions.parts
        self.flush_pending_save()
        step_dir = self._resolve_on_rank0(path)
        if step_dir is None:
            logger.info("no checkpoint under %s; starting from step 0", self.root)
            return 0, 0, {}
        saved = self._read_train_state(step_dir)
        partial = check_frozen(
            saved.frozen_params if saved is not None else None,
            self._frozen(),
            self.config.ignore_freeze_mismatch,
        )
        with self._groups.quiet_single_process():
            load_dcp_state(
                self.model,
                self.optimizer,
                self._tree(step_dir),
                exclusions,
                partial=partial,
                process_group=self._groups.dcp_group,
            )
        if saved is None:
            logger.warning(
                "%s has no %s (written by another tool): loaded its model weights; starting "
                "from step 0",
                step_dir,
                TRAIN_STATE,
            )
            return 0, 0, {}
        if scheduler is not None and "scheduler" not in excluded and saved.scheduler:
            scheduler.load_state_dict(saved.scheduler)
        if saved.rng is not None and "rng" not in excluded:
            set_rng_state(saved.rng)
        if "dataloader" not in excluded:
            self._stashed_dataloader = saved.dataloader
            if dataloader is not None:
                self.apply_dataloader_state(dataloader)
        step = saved.step if saved.step is not None else saved_step(step_dir)
        logger.info("resumed from %s (step %d)", step_dir, step)
        return step, saved.tokens_seen, saved.extra

    def _read_train_state(self, step_dir: Path) -> SavedTrainState | None:
        """This rank's share of ``train_state.pt``; None for a checkpoint of another tool.

        A checkpoint with a ``metadata.json`` (ours, upstream's) must have its train state:
        without it the checkpoint is damaged, not foreign.
        """
        if not os.path.lexists(step_dir / TRAIN_STATE) and not os.path.lexists(
            step_dir / METADATA_JSON
        ):
            return None
        state = load_train_state(step_dir / TRAIN_STATE)
        return parse_train_state(state, self.rank, self.world_size)

    def peek_saved_step(self, path: str | Path | None = None) -> int | None:
        """The step :meth:`load` would resume from, or None; reads no tensors, no collectives."""
        step_dir = resolve_resume_dir(self.root, path, self.config.load_path)
        return None if step_dir is None else saved_step(step_dir)

    def apply_dataloader_state(self, loader: Stateful | None) -> bool:
        """Restore the dataloader state stashed by :meth:`load` into ``loader``.

        False, changing nothing, when there is no stashed state, ``loader`` is None, or it has
        no ``load_state_dict`` (as upstream KempnerForge does); the state then stays stashed for
        a later call.
        """
        state = self._stashed_dataloader
        if state is None or loader is None or not hasattr(loader, "load_state_dict"):
            return False
        self._stashed_dataloader = None
        loader.load_state_dict(state)
        return True

    def _tree(self, step_dir: Path) -> Path:
        return step_dir if self.pp_rank is None else step_dir / f"pp{self.pp_rank}"

    def _state_dict(self, excluded: Collection[str] = ()) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if "model" not in excluded:
            state["model"] = get_model_state_dict(self.model)
        if self.optimizer is not None and "optimizer" not in excluded:
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        return state

    def _frozen(self) -> list[str]:
        return sorted(name for name, p in self.model.named_parameters() if not p.requires_grad)

    def _write_rank0(
        self,
        step: int,
        step_dir: Path,
        tokens_seen: int,
        scheduler: Stateful | None,
        extra: dict[str, Any] | None,
        ranks: list[dict[str, Any]],
        metrics: dict[str, float | int | None],
    ) -> None:
        prepare_step_dir(self.root, step_dir)
        train_state = compose_train_state(
            step=step,
            tokens_seen=tokens_seen,
            scheduler_state=scheduler.state_dict() if scheduler is not None else None,
            ranks=ranks,
            frozen_params=self._frozen(),
            extra=extra,
        )
        save_train_state(step_dir / TRAIN_STATE, train_state)
        write_metadata(
            step_dir,
            step=step,
            tokens_seen=tokens_seen,
            config=self.config,
            world_size=self.world_size,
            pp_stages=self.pp_stages,
            metrics=metrics,
        )

    def _finalize(self, step: int, error: BaseException | None) -> None:
        """All ranks agree that the save succeeded; then rank 0 publishes it and runs retention."""
        try:
            self._groups.fence(error, f"saving step {step}")
        except BaseException:
            self._drop_held_pins(step)
            raise
        if self.rank == 0:
            with self._latest_lock:
                point_latest(self.root, step, pp_stages=self.pp_stages)
                self._latest_step = step
            self._write_held_pins(step)  # pin(step) called while its save was in flight
            self._cleanup(step)

    def _in_flight_step(self) -> int | None:
        """The step of the background save not yet published, if any."""
        pending = None if self._async is None else self._async.pending
        return None if pending is None else pending.step

    def _cleanup(self, step: int) -> None:
        """Retention after the save of ``step`` (rank 0): the store core's plan and apply.

        Dynamic milestones and the ``latest`` target are kept and milestones do not use up
        ``keep_last_n`` (see :mod:`kempnerforge.checkpoint.store.retention`). Skipped for this
        round, never waited for, when ``kf-ckpt gc`` holds the lock. The victims are out of the
        root when this returns; their files are removed by a background thread. ``step`` was
        just written complete by every rank: the round need not verify it again.
        """
        if self._retention is not None:
            self._retention.run_round(self.config, saved_step=step)

    def _advance_latest_early(self, step: int, future: Future[Any]) -> None:
        """Flush-thread callback on rank 0: point ``latest`` at ``step`` once it is complete.

        DCP's coordinator (rank 0) writes ``.metadata`` before the flush's future completes, so
        the checkpoint is durable here; moving ``latest`` now, rather than at the next save,
        means a crash in between resumes from it instead of from the save before. Pipeline
        stages written by other coordinators may still be running: then ``latest`` waits for
        :meth:`_finalize`. Never raises (it runs in DCP's thread); never moves ``latest`` back.
        """
        if future.cancelled() or future.exception() is not None:
            return  # surfaced by wait(); latest stays where it is
        step_dir = self.root / step_dir_name(step)
        try:
            with self._latest_lock:
                if self._latest_step is not None and self._latest_step >= step:
                    return
                point_latest(self.root, step, pp_stages=self.pp_stages)
                self._latest_step = step
        except CheckpointSaveError:
            return  # other pipeline stages still writing: _finalize publishes it
        except Exception:  # a thread callback must not raise; _finalize retries and reports
            logger.warning("could not move latest to %s early", step_dir, exc_info=True)

    def _resolve_on_rank0(self, path: str | Path | None) -> Path | None:
        """Rank 0's resolution, or its error, on every rank: all ranks load the same step."""
        result: Path | BaseException | None = None
        if self.rank == 0:
            try:
                result = resolve_resume_dir(self.root, path, self.config.load_path)
            except Exception as exc:  # raised on every rank below, not only here
                result = exc
        result = self._groups.broadcast(result)
        if isinstance(result, BaseException):
            raise result
        return result
