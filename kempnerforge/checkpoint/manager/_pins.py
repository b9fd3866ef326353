"""Pins from training code: :meth:`CheckpointManager.pin` and :meth:`CheckpointManager.unpin`.

Rank 0 writes (through :mod:`kempnerforge.checkpoint.store.pins`, under the root's lock); the
other ranks return at once, so the calls are cheap and need no collective. A pin of the step
whose background save is still in flight is held back and written as soon as that save is
published, before the retention round that follows it: the save cannot be pinned while
incomplete, and it is the newest checkpoint until then, so nothing can delete it meanwhile.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kempnerforge.checkpoint.store.pins import check_note, pin_checkpoint, unpin_checkpoint
from kempnerforge.errors import KempnerForgeError

__all__ = ["PIN_LOCK_WAIT_S", "PinsMixin"]

logger = logging.getLogger(__name__)

PIN_LOCK_WAIT_S = 60.0
"""How long :meth:`PinsMixin.pin` waits for a ``kf-ckpt gc`` that holds the root's lock."""


class PinsMixin:
    """The pin side of :class:`~kempnerforge.checkpoint.manager.CheckpointManager`."""

    root: Path
    rank: int

    def _in_flight_step(self) -> int | None:  # provided by PublishingMixin (_publishing.py)
        raise NotImplementedError

    def pin(self, step: int, note: str | None = None) -> None:
        """Pin the checkpoint of ``step``: retention keeps it, outside ``keep_last_n``.

        Call it on every rank (or only on rank 0): rank 0 writes, the others return at once.
        Safe while a background save is in flight; pinning the step of that save is held back
        until it is published. Pinning a pinned checkpoint updates its note.

        Example:
            >>> if eval_loss < best_loss:  # doctest: +SKIP
            ...     manager.save(step, tokens_seen, metrics={"eval_loss": eval_loss})
            ...     manager.pin(step, note=f"best eval loss {eval_loss:.3f}")
            ...     if best_step is not None:
            ...         manager.unpin(best_step)
            ...     best_loss, best_step = eval_loss, step

        Raises:
            CheckpointNotFoundError: no checkpoint of ``step``, or an incomplete one.
            LockBusyError: ``kf-ckpt gc`` held the root's lock for :data:`PIN_LOCK_WAIT_S`.
            ValueError: ``note`` is too long.
        """
        note = check_note(note)
        if self.rank != 0:
            return
        if step == self._in_flight_step():
            self._held_pins()[step] = note
            return
        pin_checkpoint(self.root, step, note=note, wait_lock_s=PIN_LOCK_WAIT_S)

    def unpin(self, step: int) -> bool:
        """Remove the pin of ``step`` (rank 0 writes); returns whether it was pinned.

        The checkpoint is then subject to retention again: the next save's retention round may
        delete it. Unpinning a checkpoint that is not pinned changes nothing. Other ranks
        return False at once.

        Raises:
            CheckpointNotFoundError: no checkpoint of ``step``.
            LockBusyError: ``kf-ckpt gc`` held the root's lock for :data:`PIN_LOCK_WAIT_S`.
        """
        if self.rank != 0:
            return False
        held = self._held_pins()
        if step in held:
            del held[step]
            return True
        return unpin_checkpoint(self.root, step, wait_lock_s=PIN_LOCK_WAIT_S).removed is not None

    def _write_held_pins(self, step: int) -> None:
        """Write the pin held back for ``step`` now that its save is published (rank 0)."""
        held = self._held_pins()
        if step not in held:
            return
        note = held.pop(step)
        try:
            pin_checkpoint(self.root, step, note=note, wait_lock_s=PIN_LOCK_WAIT_S)
        except (OSError, KempnerForgeError) as exc:
            logger.error("could not pin step %d: %s; pin it with 'kf-ckpt pin'", step, exc)

    def _drop_held_pins(self, step: int) -> None:
        """Forget the pin held back for ``step``: its save failed."""
        held = self._held_pins()
        if step in held:
            del held[step]
            logger.error("the save of step %d failed; its pin was not written", step)

    def _held_pins(self) -> dict[int, str | None]:
        held: dict[int, str | None] | None = getattr(self, "_pins_held", None)
        if held is None:
            held = {}
            self._pins_held: dict[int, str | None] = held
        return held
