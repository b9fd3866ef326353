"""Rank 0's side of a save: owning the root, the in-flight directory and its lease, publishing.

Torch-free. The store does the file work (:mod:`kempnerforge.checkpoint.store.publish`); this
module keeps what one manager knows between calls: its owner record, the saves it has in flight,
and the newest step it published. A save may be published from two threads: DCP's flush thread
(as soon as the background flush is durable, so that a crash before the next ``save()`` resumes
from it) and the caller's thread (:meth:`Publisher.publish`, which every save ends with); the
per-save lock makes the second call a no-op.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.layout import LEASE_NAME
from kempnerforge.checkpoint.store.lease import Heartbeat
from kempnerforge.checkpoint.store.owner import Owner, claim_root
from kempnerforge.checkpoint.store.publish import begin_save, publish_save
from kempnerforge.checkpoint.store.swap import discard_save
from kempnerforge.errors import CheckpointSaveError, SupersededError

__all__ = ["InFlightSave", "Publisher"]

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, eq=False)
class InFlightSave:
    """One save of this manager between its in-flight directory's creation and its publication."""

    step: int
    path: Path
    """The in-flight directory (``.kf-inflight.step_<N>.<id>``) every rank writes into."""
    heartbeat: Heartbeat | None = None
    published: bool = False
    error: BaseException | None = None
    """Why publishing from the flush thread failed for good (another job took over)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Publisher:
    """Ownership and publication for one manager (used on rank 0 only)."""

    def __init__(self, root: Path, *, pp_stages: int | None) -> None:
        self.root = root
        self.pp_stages = pp_stages
        self.owner: Owner | None = None
        self.published_steps: list[int] = []
        """Steps this manager published since it last took ownership, in order."""

    def claim(self, resumed_from: Path | None) -> Owner:
        """Take ownership of the root (:func:`kempnerforge.checkpoint.store.owner.claim_root`)."""
        self.owner = claim_root(self.root, resumed_from=resumed_from)
        self.published_steps = []
        return self.owner

    def begin(self, step: int) -> InFlightSave:
        """Create the in-flight directory of ``step`` (taking ownership first if not yet owner)."""
        owner = self.owner or self.claim(None)
        path = begin_save(self.root, step, owner_token=owner.token)
        return InFlightSave(step=step, path=path, heartbeat=Heartbeat(path / LEASE_NAME))

    def publish(self, save: InFlightSave) -> None:
        """Publish ``save`` unless the flush thread already did.

        Raises:
            SupersededError: another job owns the root now; the save is discarded.
            CheckpointSaveError: the save is incomplete or could not be renamed into place.
        """
        with save.lock:
            if save.published:
                return
            if save.error is not None:
                raise save.error
            self._publish_locked(save)

    def publish_early(self, save: InFlightSave, future: Future[Any]) -> None:
        """Flush-thread callback: publish ``save`` as soon as its flush is durable; never raises.

        Pipeline stages written by other coordinators may still be running: then the save is
        incomplete here and :meth:`publish` publishes it at the end of the save.
        """
        if future.cancelled() or future.exception() is not None:
            return  # surfaced by wait(); latest stays where it is
        with save.lock:
            if save.published or save.error is not None:
                return
            try:
                self._publish_locked(save)
            except SupersededError as exc:
                save.error = exc
            except CheckpointSaveError:
                return  # other stages still writing: publish() retries and reports
            except Exception:  # a thread callback must not raise; publish() retries and reports
                logger.warning("could not publish step %d early", save.step, exc_info=True)

    def _publish_locked(self, save: InFlightSave) -> None:
        if self.owner is None:
            raise CheckpointSaveError(f"step {save.step}: this manager never owned {self.root}")
        try:
            publish_save(
                self.root,
                save.path,
                save.step,
                owner_token=self.owner.token,
                pp_stages=self.pp_stages,
            )
        except SupersededError:
            self.discard(save)
            raise
        save.published = True
        self.published_steps.append(save.step)
        self._stop(save)

    def discard(self, save: InFlightSave) -> None:
        """Drop a save that failed: stop its heartbeat, move its directory into the trash."""
        self._stop(save)
        if not save.published:
            discard_save(self.root, save.path)

    @staticmethod
    def _stop(save: InFlightSave) -> None:
        if save.heartbeat is not None:
            save.heartbeat.stop()
            save.heartbeat = None
