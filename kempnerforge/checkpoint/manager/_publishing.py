"""The finishing half of a save of :class:`~kempnerforge.checkpoint.manager.CheckpointManager`.

Once DCP has written a save's tensors (at once in sync mode; on a flush thread in the async
modes), every rank agrees that it succeeded, rank 0 publishes it (rename into ``step_<N>``,
``latest``; see :mod:`._publisher`), writes the pins held back while it was in flight, and runs a
retention round (:class:`~kempnerforge.checkpoint.store.background.BackgroundRetention`). A
failure reaches every rank through a fence, and the failed save's in-flight directory is
discarded. Also the end of a run: :meth:`~PublishingMixin.wait` and
:meth:`~PublishingMixin.close`. The writing half is :mod:`._saving`.
"""

from __future__ import annotations

import logging

from kempnerforge.checkpoint.manager._groups import CheckpointGroups, LostPeerError
from kempnerforge.checkpoint.manager._pins import PinsMixin
from kempnerforge.checkpoint.manager._publisher import InFlightSave, Publisher
from kempnerforge.checkpoint.manager.async_save import AsyncCheckpointer
from kempnerforge.checkpoint.store.background import BackgroundRetention
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import CheckpointSaveError, SupersededError

__all__ = ["PublishingMixin"]

logger = logging.getLogger(__name__)


class PublishingMixin(PinsMixin):
    """``flush_pending_save``, ``wait`` and ``close`` of the manager, and publishing a save."""

    config: CheckpointConfig
    rank: int
    _groups: CheckpointGroups
    _publisher: Publisher
    _in_flight: InFlightSave | None
    _async: AsyncCheckpointer | None
    _retention: BackgroundRetention | None

    def flush_pending_save(self) -> int | None:
        """Finish the background save, if any: wait for it, publish it, run retention.

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

    def _finish_previous(self) -> None:
        """Finish the previous background save before a new one; its failure does not stop it."""
        try:
            self.flush_pending_save()
        except (SupersededError, LostPeerError):
            raise  # the job should stop: saving again cannot succeed
        except CheckpointSaveError as exc:
            logger.error("%s; saving the next checkpoint regardless", exc)

    def _finalize(self, step: int, error: BaseException | None) -> None:
        """All ranks agree that the save succeeded; rank 0 publishes it; then retention."""
        try:
            self._fenced(error, f"saving step {step}")
            error = None
            if self._in_flight is not None:
                try:
                    self._publisher.publish(self._in_flight)
                except Exception as exc:
                    error = exc
            self._fenced(error, f"publishing step {step}")
        except BaseException:
            self._drop_held_pins(step)
            raise
        self._in_flight = None
        if self.rank == 0:
            self._write_held_pins(step)  # pin(step) called while its save was in flight
            self._cleanup(step)

    def _in_flight_step(self) -> int | None:
        """The step of the background save not yet published, if any."""
        pending = None if self._async is None else self._async.pending
        return None if pending is None else pending.step

    def _fenced(self, error: BaseException | None, what: str) -> None:
        """:meth:`CheckpointGroups.fence`; on failure rank 0 discards the in-flight directory."""
        try:
            self._groups.fence(error, what)
        except BaseException:
            if self._in_flight is not None:
                self._publisher.discard(self._in_flight)
                self._in_flight = None
            raise

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
