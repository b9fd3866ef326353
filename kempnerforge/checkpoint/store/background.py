"""Retention for a training process: decided on the training thread, deleted behind it.

After each save, rank 0 of a training run applies retention. Deleting a checkpoint of a
many-rank run means tens of thousands of ``unlink`` calls, each a round trip to the metadata
server of a parallel file system: seconds to minutes that every rank would wait for at its next
collective. So the work is split in two:

* **On the training thread** (:func:`retire_victims`, through
  :meth:`BackgroundRetention.run_round`, before ``save()`` or ``wait()`` returns): under the
  root's lock, a light scan (a fixed number of calls per checkpoint, no walk of shard files; see
  :mod:`~kempnerforge.checkpoint.store._light_scan`), the plan, and one atomic rename per victim
  into ``.kf-trash/``. From then on the victim is out of the ``step_<N>`` namespace: no loader,
  ``ls`` or resume can see it.
* **On one background thread** of that process: the trash is emptied with ``unlinkat``/``rmdir``
  relative to directories opened with ``O_NOFOLLOW`` (a symlink is unlinked, never followed). No
  lock, no collective: nothing else ever moves anything out of the trash, and ``kf-ckpt gc``
  emptying the same trash at the same time is harmless (whoever gets to a file first removes it;
  the other counts it as gone). At most one such thread runs; a round that moves more victims
  while it runs asks it to look again rather than starting a second one.

A process killed meanwhile (SIGKILL, preemption) leaves only whole directories in the trash,
never a partly deleted ``step_<N>`` in the root; the next run's first round, or ``kf-ckpt gc``,
finishes them. Errors of the background thread are logged when they happen and again at the
next round (which retries), never raised into the training loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from pathlib import Path

from kempnerforge.checkpoint.store._cache_file import Stamp, stamp_of
from kempnerforge.checkpoint.store._emptier import TrashEmptier, has_trash
from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store._retire import retire_victims
from kempnerforge.checkpoint.store.collect import GcResult
from kempnerforge.checkpoint.store.layout import TRASH_NAME, step_dir_name
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import KempnerForgeError, LockBusyError

__all__ = ["CLOSE_WAIT_S", "BackgroundRetention", "retire_victims"]

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 300.0
"""How long :meth:`BackgroundRetention.close` waits for the trash to be emptied by default."""


class BackgroundRetention:
    """Retention rounds of one training process and the thread that empties their trash.

    Create it on the one rank that applies retention (rank 0); call :meth:`run_round` after
    each save from the training thread and :meth:`close` at the end of the run.

    Args:
        root: the checkpoint root.
        close_wait_s: how long :meth:`close` waits for the trash to be emptied by default.

    Example:
        >>> retention = BackgroundRetention("runs/a/ckpt")  # doctest: +SKIP
        >>> retention.run_round(config)  # after a save: renamed, deleting  # doctest: +SKIP
        >>> retention.close()  # end of the run: waits for the deletion  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, *, close_wait_s: float = CLOSE_WAIT_S) -> None:
        self.root = Path(root)
        self.close_wait_s = close_wait_s
        self._emptier = TrashEmptier(self.root)
        # Checkpoints known to pass the check (this process wrote them, or a round checked
        # them), with the stamps of their directories then: checked once, not every round.
        self._good: dict[str, list[Stamp | None]] = {}

    def run_round(
        self, config: CheckpointConfig, *, saved_step: int | None = None
    ) -> GcResult | None:
        """Plan, rename the victims into the trash, start emptying it; never raises.

        ``saved_step`` is the checkpoint this process has just written and seen complete on
        every rank: it counts as checked (see :func:`retire_victims`).

        Returns the round's result; None when it was skipped (another process holds the lock:
        the next round retries) or failed (logged).
        """
        self._report_problems("since the last save; retrying")
        if saved_step is not None:
            self._remember(step_dir_name(saved_step))
        result = None
        try:
            result = retire_victims(self.root, config, known_good=self._still_good())
        except LockBusyError as exc:
            logger.warning("retention skipped this round (another process holds the lock): %s", exc)
        except (OSError, KempnerForgeError, RecursionError) as exc:
            logger.error("retention failed under %s: %s; run 'kf-ckpt gc'", self.root, exc)
        else:
            _log_round(result)
            self._remember_checked(result)
        if (result is not None and result.applied and result.applied.in_trash) or has_trash(
            self.root
        ):
            self._emptier.start()
        return result

    def _remember_checked(self, result: GcResult) -> None:
        """Remember what the round found good: verified in full (the scan cache), or checked
        because a deletion rests on it (every complete checkpoint from the oldest victim up)."""
        victims = result.plan.to_delete
        oldest = victims[0].step if victims else None
        for info in result.catalog.checkpoints:
            checked = oldest is not None and info.complete and info.step >= oldest
            if (info.verified or checked) and info.name not in self._good:
                self._remember(info.name)

    def _remember(self, name: str) -> None:
        self._good[name] = _stamps(self.root, name)

    def _still_good(self) -> set[int]:
        """The remembered checkpoints whose directories have not changed (a few ``lstat`` each)."""
        good = set()
        for name, stamps in list(self._good.items()):
            if stamps[0] is not None and _stamps(self.root, name) == stamps:
                good.add(int(name.removeprefix("step_")))
            else:
                del self._good[name]  # gone or changed: checked again if a deletion needs it
        return good

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the trash is emptied (at most ``timeout_s``); True when it is."""
        return self._emptier.wait(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait for the emptying (``close_wait_s`` by default), then drop the empty trash.

        Returns False, with a warning in the log, when the thread is still deleting after the
        wait: the rest stays in the trash for the next run or ``kf-ckpt gc``.
        """
        wait_s = self.close_wait_s if timeout_s is None else timeout_s
        if not self.wait(wait_s):
            logger.warning(
                "gave up after %.0f s waiting for the background removal of %s; what is "
                "left there is removed by the next run or by 'kf-ckpt gc'",
                wait_s,
                self.root / TRASH_NAME,
            )
            return False
        self._report_problems("while emptying the trash; the next run or 'kf-ckpt gc' retries")
        # Under the lock: a gc may be about to rename a victim into it. Busy: leave it there.
        with (
            contextlib.suppress(KempnerForgeError, OSError),  # busy, not empty, or gone
            hold_lock(self.root, wait_lock_s=0.0),
        ):
            os.rmdir(self.root / TRASH_NAME)
        return True

    def _report_problems(self, when: str) -> None:
        problems = self._emptier.take_problems()
        if problems:
            logger.warning(
                "the background removal of %s failed %s: %s",
                self.root / TRASH_NAME,
                when,
                "; ".join(problems),
            )


def _stamps(root: Path, name: str) -> list[Stamp | None]:
    """The stamps of step directory ``name`` and of its ``pp<k>`` stage directories."""
    stamps: list[Stamp | None] = []
    for rel in itertools.chain([name], (f"{name}/pp{k}" for k in itertools.count())):
        try:
            st = os.lstat(root / rel)
        except OSError:
            if not stamps:
                stamps.append(None)  # the step directory itself is gone
            break
        stamps.append(stamp_of(st))
    return stamps


def _log_round(result: GcResult) -> None:
    applied = result.applied
    if applied is None:
        return
    if applied.in_trash:
        infos = [result.catalog.get(d.step) for d in applied.in_trash]
        known = all(info is not None and info.size_known for info in infos)
        size = f"{sum(d.size_bytes for d in applied.in_trash)} bytes" if known else "size unknown"
        logger.info(
            "retention moved %s into %s (%s); its files are removed in the background",
            ", ".join(d.name for d in applied.in_trash),
            TRASH_NAME,
            size,
        )
    for failure in applied.failed:
        logger.error("retention could not delete %s: %s", failure.path, failure.reason)
    for skip in applied.skipped:
        logger.warning("retention left %s in place: %s", skip.path, skip.reason)
    for warning in applied.warnings:
        logger.warning("retention under %s: %s", result.plan.root, warning)
