"""CheckpointManager: the DCP save and resume that a training loop calls on every rank.

A save is written into its own in-flight directory (``.kf-inflight.step_N.<id>/``, or its
``pp{k}/`` per pipeline stage): rank 0 creates it with a writer lease and writes
``train_state.pt`` and ``metadata.json``, all ranks fence on a gloo group, then DCP writes the
model and optimizer shards and, last, its ``.metadata``. Once every rank agrees the save
succeeded, rank 0 publishes it: under the root's lock, and only while this manager still owns the
root, the directory is renamed to ``step_N`` (an older ``step_N`` is swapped out only now) and
``latest`` moves forward; then retention runs (:mod:`~kempnerforge.checkpoint.store.background`).
In the async modes the ranks first agree that staging succeeded everywhere, then flush in the
background; rank 0 publishes from the flush thread as soon as the checkpoint is complete on disk,
and retention runs at the next ``save()``, ``wait()`` or ``flush_pending_save()``. See
``docs/guides/preemption.rst``.

Example:
    >>> manager = CheckpointManager(config, model, optimizer)  # doctest: +SKIP
    >>> step, tokens_seen, extra = manager.load()  # (0, 0, {}) on a fresh run  # doctest: +SKIP
    >>> for step in range(step + 1, max_steps + 1):  # doctest: +SKIP
    ...     tokens_seen += tokens_per_step  # after this step's forward, backward, optimizer step
    ...     if config.should_save(step):
    ...         manager.save(step, tokens_seen, scheduler=scheduler)
    >>> manager.close()  # finishes a background save  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from kempnerforge.checkpoint.manager._groups import (
    COLLECTIVE_TIMEOUT_S,
    CheckpointGroups,
)
from kempnerforge.checkpoint.manager._load import LOADABLE_KEYS, load_dcp_state, plan_exclusions
from kempnerforge.checkpoint.manager._publisher import InFlightSave, Publisher
from kempnerforge.checkpoint.manager._save import Stateful
from kempnerforge.checkpoint.manager._saving import SavingMixin
from kempnerforge.checkpoint.manager._tensors import (
    frozen_names,
)
from kempnerforge.checkpoint.manager.async_save import AsyncCheckpointer
from kempnerforge.checkpoint.manager.train_state import (
    SavedTrainState,
    check_frozen,
    load_train_state,
    parse_train_state,
    set_rng_state,
)
from kempnerforge.checkpoint.store.background import BackgroundRetention
from kempnerforge.checkpoint.store.layout import METADATA_JSON, TRAIN_STATE
from kempnerforge.checkpoint.store.resume import resolve_resume_dir, saved_step
from kempnerforge.checkpoint.store.swap import recover_root
from kempnerforge.config.checkpoint import AsyncCheckpointMode, CheckpointConfig
from kempnerforge.errors import CheckpointSaveError

__all__ = ["CheckpointManager", "Stateful"]

logger = logging.getLogger(__name__)


class CheckpointManager(SavingMixin):
    """Saves and restores model, optimizer and train state with torch.distributed.checkpoint.

    Construct it on every rank after ``torch.distributed`` is initialised (any backend: it makes
    its own gloo groups), and call every method on every rank, except :meth:`peek_saved_step`.

    Args:
        config: The run's checkpoint settings (``dir``, ``async_mode``, retention, ...).
        model: The model, plain or sharded with FSDP2 ``fully_shard``.
        optimizer: Its optimizer (moments are saved keyed by parameter name), or None.
        process_group: The ranks that write this DCP tree together (default: all ranks).
        pp_rank: This rank's pipeline stage; each stage writes ``step_N/pp{pp_rank}/``.
        collective_timeout_s: Bound on every collective of the manager and of DCP's flushes: a
            rank that died turns into a :class:`~kempnerforge.errors.CheckpointSaveError` on the
            others after this long, not a hang.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        process_group: dist.ProcessGroup | None = None,
        pp_rank: int | None = None,
        *,
        collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.root = Path(config.dir)
        self.model = model
        self.optimizer = optimizer
        self.pp_rank = pp_rank
        self._groups = CheckpointGroups(process_group, collective_timeout_s)
        self.rank = self._groups.rank
        self.world_size = self._groups.world_size
        self.pp_stages = None if pp_rank is None else self._groups.all_max(pp_rank + 1)
        self._stashed_dataloader: dict[str, Any] | None = None
        self._publisher = Publisher(self.root, pp_stages=self.pp_stages)  # used on rank 0 only
        self._in_flight: InFlightSave | None = None  # rank 0: the save not yet published
        # Retention runs on rank 0 only; its deletions on a thread of its own (no collectives).
        self._retention = BackgroundRetention(self.root) if self.rank == 0 else None
        self._async: AsyncCheckpointer | None = None
        if config.async_mode is not AsyncCheckpointMode.disabled:
            self._async = AsyncCheckpointer(
                process_group=self._groups.dcp_group,
                pinned=config.async_mode is AsyncCheckpointMode.async_pinned,
            )

    def load(
        self,
        path: str | Path | None = None,
        scheduler: Stateful | None = None,
        dataloader: Stateful | None = None,
        exclude_keys: list[str] | None = None,
    ) -> tuple[int, int, dict[str, Any]]:
        """Resume from ``path``, else ``config.load_path``, else ``<dir>/latest``.

        Resuming makes this job the owner of ``<dir>`` (a job it replaces can no longer publish
        there); resuming from a checkpoint older than ``latest`` is a rollback, recorded in the
        root, and ``latest`` names the resumed checkpoint from then on. ``exclude_keys`` (default
        ``config.exclude_from_loading``) names what not to restore: whole parts (``model``,
        ``optimizer``, ``scheduler``, ``dataloader``, ``rng``) or FQN prefixes of model
        parameters and buffers (``output``, ``layers.31.mlp``), which keep their current values
        and optimizer state. Without ``dataloader``, its state is kept for
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
        step_dir = self._resume_point(path)
        if step_dir is None:
            logger.info("no checkpoint under %s; starting from step 0", self.root)
            return 0, 0, {}
        saved = self._read_train_state(step_dir)
        partial = check_frozen(
            saved.frozen_params if saved is not None else None,
            frozen_names(self.model),
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

    def _resume_point(self, path: str | Path | None) -> Path | None:
        """Rank 0 resolves the checkpoint and takes ownership; every rank gets the result."""
        result: Path | BaseException | None = None
        if self.rank == 0:
            try:
                recover_root(self.root)
                result = resolve_resume_dir(self.root, path, self.config.load_path)
                if result is not None:
                    self._claim(result)
            except Exception as exc:  # raised on every rank below, not only here
                result = exc
        return self._groups.share(result, "resolving the checkpoint to resume from")

    def _claim(self, resumed_from: Path) -> None:
        try:
            self._publisher.claim(resumed_from)
        except CheckpointSaveError as exc:  # a read-only root: loading still works
            logger.warning("%s; ownership is taken at the first save instead", exc)
