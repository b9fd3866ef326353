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
import dataclasses
import itertools
import logging
import os
import stat
import threading
from collections.abc import Collection
from pathlib import Path

from kempnerforge.checkpoint.store._light_scan import probe_complete, scan_light
from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store._trash import clear_trash, open_trash
from kempnerforge.checkpoint.store._walk import Stamp, stamp_of
from kempnerforge.checkpoint.store.apply import apply_locked
from kempnerforge.checkpoint.store.catalog import check_root, scan
from kempnerforge.checkpoint.store.collect import GcResult, relied_upon, verify_deletions
from kempnerforge.checkpoint.store.layout import TRASH_NAME, step_dir_name
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.checkpoint.store.retention import RetentionPlan, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import KempnerForgeError, LockBusyError

__all__ = ["CLOSE_WAIT_S", "BackgroundRetention", "retire_victims"]

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 300.0
"""How long :meth:`BackgroundRetention.close` waits for the trash to be emptied by default."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def retire_victims(
    root: str | Path, config: CheckpointConfig, *, known_good: Collection[int] = ()
) -> GcResult:
    """A retention round that keeps the caller off the shard files: light scan, plan, rename.

    Under the lock (tried once, never waited for), as
    :func:`~kempnerforge.checkpoint.store.collect.collect_garbage` does, except that the scan is
    light, the checkpoints the plan relies on are re-checked by probes, and the victims are only
    renamed into the trash (durably) and reported as ``applied.in_trash``: removing their files
    is the caller's job, on another thread. The checkpoints the deletions rest on are checked
    (their manifests parsed through the allowlist), except those of ``known_good``: steps the
    caller knows pass (it wrote them, or checked them in an earlier round and they have not
    changed since).

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        LockBusyError: another process (``kf-ckpt gc``, a pin) holds the lock.
        RetentionError: the lock file or the trash cannot be used.
    """
    path = check_root(root)
    with hold_lock(path, wait_lock_s=0.0):
        catalog = _vouched(scan_light(path), known_good)
        plan = plan_retention(catalog, config)
        if catalog.cache_hits and plan.to_delete and not _probed_complete(plan):
            catalog = scan(path, use_cache=False)  # the cache was wrong: trust only a full walk
            plan = plan_retention(catalog, config)
        # A deletion must not rest on a corrupt checkpoint, and a corrupt one is never a victim:
        # their manifests are parsed through the allowlist (one open each, no walk: the shards
        # are checked by gc, ls and resume, which may walk).
        catalog, plan = verify_deletions(catalog, plan, config, shards=False)
        applied = apply_locked(plan, defer_removal=True)
    return GcResult(catalog=catalog, plan=plan, applied=applied)


def _vouched(catalog: Catalog, known_good: Collection[int]) -> Catalog:
    """``catalog`` with the complete checkpoints of ``known_good`` marked verified."""
    if not known_good:
        return catalog
    checkpoints = tuple(
        dataclasses.replace(c, verified=True) if c.complete and c.step in known_good else c
        for c in catalog.checkpoints
    )
    return dataclasses.replace(catalog, checkpoints=checkpoints)


def _probed_complete(plan: RetentionPlan) -> bool:
    """The checkpoints the plan deletes others on account of are complete on disk (probed)."""
    root_fd = os.open(plan.root, _DIR_FLAGS)
    try:
        return all(probe_complete(root_fd, d.name) for d in relied_upon(plan))
    finally:
        os.close(root_fd)


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
        self._mutex = threading.Lock()  # guards the four fields below
        self._thread: threading.Thread | None = None
        self._again = False  # a round moved more victims while the thread was emptying
        self._problems: list[str] = []  # background errors not yet reported at a round
        # Checkpoints known to pass the check (this process wrote them, or a round checked
        # them), with the stamps of their directories then: checked once, not every round.
        self._good: dict[str, list[Stamp | None]] = {}

    @property
    def emptying(self) -> bool:
        """The background thread is emptying the trash right now."""
        with self._mutex:
            return self._thread is not None

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
        if (result is not None and result.applied and result.applied.in_trash) or _has_trash(
            self.root
        ):
            self._start_emptying()
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
        with self._mutex:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                return False
        return True

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

    def _start_emptying(self) -> None:
        with self._mutex:
            if self._thread is not None:
                self._again = True  # the running thread lists the trash once more
                return
            self._thread = threading.Thread(
                target=self._run, name=f"kf-ckpt trash emptier ({self.root})", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                problems = _empty_trash(self.root)
            except Exception as exc:  # a background thread must never die silently
                logger.exception("emptying %s failed", self.root / TRASH_NAME)
                problems = [f"{type(exc).__name__}: {exc}"]
            if problems:
                logger.error("could not empty %s: %s", self.root / TRASH_NAME, "; ".join(problems))
            with self._mutex:
                self._problems.extend(problems)
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def _report_problems(self, when: str) -> None:
        with self._mutex:
            problems, self._problems = self._problems, []
        if problems:
            logger.warning(
                "the background removal of %s failed %s: %s",
                self.root / TRASH_NAME,
                when,
                "; ".join(problems),
            )


def _empty_trash(root: Path) -> list[str]:
    """Remove everything in ``root``'s trash; return why entries could not be removed."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        return [f"cannot open {root}: {exc.strerror}"]
    try:
        trash_fd = open_trash(root_fd, create=False)
        if trash_fd is None:
            return []  # emptied and removed by a concurrent gc
        try:
            return clear_trash(trash_fd)[1]
        finally:
            os.close(trash_fd)
    except KempnerForgeError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"cannot list {root / TRASH_NAME}: {exc.strerror}"]
    finally:
        os.close(root_fd)


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


def _has_trash(root: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(root / TRASH_NAME).st_mode)
    except OSError:
        return False


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
