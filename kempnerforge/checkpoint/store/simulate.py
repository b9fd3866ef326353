"""Preview a run before it starts: which steps it saves, what retention keeps, peak disk use.

A pure function of a :class:`~kempnerforge.config.checkpoint.CheckpointConfig` and a step count
(no filesystem, no clock, no torch), behind ``kf-ckpt plan``. The run saves at every step
``1 .. max_steps`` where :meth:`CheckpointConfig.should_save` is true, as the training loop asks it
after each optimizer step, and retention runs after each save; ``pins`` are pinned as soon as they
are saved.

Nothing here visits every step or every save: the cost is bounded by the number of milestones and
pins (and, for a custom window strategy, by the window's width), never by ``max_steps`` or the
number of interval saves, so ``--max-steps 10**12`` answers at once. That works because of what
the retention rules (:func:`~kempnerforge.checkpoint.store.retention.plan_retention`) do to a
run's saves, all complete and the newest always ``latest``:

* every milestone and every pinned save survives (rules ``milestone``, ``pinned``; the final
  save is ``latest``) and none of them uses a ``keep_last_n`` slot;
* with ``keep_last_n = k >= 1``, after each round the other (interval) saves on disk are the
  newest ``k`` of those made so far (``within_keep_last_n``; the newest is also ``latest``), and
  each older one was deleted as ``beyond_keep_last_n``; with ``k <= 0`` every save survives
  (``keep_all``).

So after a save the disk holds ``K + min(k, N)`` checkpoints (``K`` and ``N`` count the kept-for-
good and the interval saves made so far), and the peak -- the kept ones plus the save being
written, which is what a quota must hold -- is reached at the last save, first after the last
save that raised the count. ``tests/checkpoint/store/test_simulate.py`` checks every figure
against a replay that asks every step and runs the real retention after every save.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from kempnerforge.checkpoint.store._peak import peak_on_disk
from kempnerforge.checkpoint.store._saves import (
    Piece,
    Span,
    check_max_steps,
    interval_spans,
    is_saved,
    split_span,
    window_saves,
)
from kempnerforge.checkpoint.store.retention import Reason
from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = ["RunSimulation", "SaveRun", "SimulatedSave", "is_saved", "simulate_run"]


@dataclass(frozen=True, kw_only=True)
class SimulatedSave:
    """One save of the simulated run and its fate.

    ``reason`` is retention's reason for the final decision: why it is still on disk at the end,
    or why the round that deleted it did so.
    """

    step: int
    milestone: bool
    survives: bool
    reason: Reason
    pinned: bool = False
    """Pinned right after it was saved (``pins`` of :func:`simulate_run`)."""


@dataclass(frozen=True, kw_only=True)
class SaveRun:
    """Consecutive saves of one kind and fate: evenly spaced interval saves, or listed ones."""

    first: int
    last: int
    count: int
    every: int | None
    """The spacing of evenly spaced saves; None for listed ones (see :attr:`steps`)."""
    steps: tuple[int, ...] | None
    """The steps of a run of milestones or pins (there are few); None for evenly spaced saves."""
    milestone: bool
    pinned: bool
    survives: bool
    reason: Reason

    def iter_steps(self) -> Iterator[int]:
        """The steps of this run, in order."""
        if self.steps is not None:
            yield from self.steps
        else:
            yield from range(self.first, self.last + 1, self.every or 1)


@dataclass(frozen=True, kw_only=True)
class RunSimulation:
    """What a run of ``max_steps`` steps saves and keeps, and its peak disk use, summarised."""

    max_steps: int
    runs: tuple[SaveRun, ...]
    """Every save, as runs of one kind and fate, in step order."""
    milestones: tuple[int, ...]
    """The saves that are dynamic milestones (never deleted by retention)."""
    pins: tuple[int, ...]
    """The saves forecast as pinned (never deleted by retention)."""
    save_count: int
    survivor_count: int
    """The checkpoints still on disk when the run ends."""
    max_on_disk: int
    """The most checkpoints on disk at one moment (kept ones plus the save just written)."""
    max_on_disk_step: int | None
    """The first save at which that peak is reached (None when the run saves nothing)."""
    ckpt_size_bytes: int | None = None
    """Size of one checkpoint, when given."""

    def iter_saves(self) -> Iterator[SimulatedSave]:
        """Every save in step order (as many as the run makes: use on short runs)."""
        for run in self.runs:
            for step in run.iter_steps():
                yield SimulatedSave(
                    step=step,
                    milestone=run.milestone,
                    survives=run.survives,
                    reason=run.reason,
                    pinned=run.pinned,
                )

    def iter_survivors(self) -> Iterator[int]:
        """The steps still on disk at the end, in order."""
        for run in self.runs:
            if run.survives:
                yield from run.iter_steps()

    @property
    def peak_disk_bytes(self) -> int | None:
        """``max_on_disk * ckpt_size_bytes``, or None without a checkpoint size."""
        if self.ckpt_size_bytes is None:
            return None
        return self.max_on_disk * self.ckpt_size_bytes


def simulate_run(
    config: CheckpointConfig,
    max_steps: int,
    *,
    ckpt_size_bytes: int | None = None,
    pins: Collection[int] = (),
) -> RunSimulation:
    """Forecast the saves and retention rounds of a run of ``max_steps`` steps.

    Args:
        config: the run's checkpoint config (interval, window, keep_last_n).
        max_steps: the number of training steps; saves happen at steps ``1 .. max_steps``.
        ckpt_size_bytes: size of one checkpoint, for the peak disk use.
        pins: steps pinned as soon as they are saved (a step the run never saves pins nothing).

    Example:
        >>> from kempnerforge.config import CheckpointConfig
        >>> sim = simulate_run(CheckpointConfig(interval=100, keep_last_n=2), 500)
        >>> list(sim.iter_survivors()), sim.max_on_disk, sim.max_on_disk_step
        ([400, 500], 3, 300)
    """
    check_max_steps(max_steps)
    pinned = sorted({p for p in pins if is_saved(config, max_steps, p)})
    before, after = interval_spans(config, max_steps)
    # Inside the window only the strategy saves, and each of its saves is a milestone
    # (``is_dynamic_milestone`` is the strategy's verdict); outside it only the interval saves.
    milestones = window_saves(config, max_steps)
    pieces: list[Piece] = [*split_span(before, pinned), *milestones, *split_span(after, pinned)]
    pieces = [p for p in pieces if not isinstance(p, Span) or p.count]
    keepers = [p for p in pieces if isinstance(p, int)]
    total_plain = sum(p.count for p in pieces if isinstance(p, Span))
    final = _final_step(pieces)
    keep_last_n = config.keep_last_n
    kept_plain = total_plain if keep_last_n <= 0 else min(keep_last_n, total_plain)
    runs = _runs(pieces, set(milestones), set(pinned), total_plain - kept_plain, final, keep_last_n)
    peak, peak_step = peak_on_disk(pieces, keep_last_n, final)
    return RunSimulation(
        max_steps=max_steps,
        runs=tuple(runs),
        milestones=tuple(milestones),
        pins=tuple(pinned),
        save_count=total_plain + len(keepers),
        survivor_count=len(keepers) + kept_plain,
        max_on_disk=peak,
        max_on_disk_step=peak_step,
        ckpt_size_bytes=ckpt_size_bytes,
    )


def _final_step(pieces: list[Piece]) -> int | None:
    if not pieces:
        return None
    last = pieces[-1]
    return last.last if isinstance(last, Span) else last


def _runs(
    pieces: list[Piece],
    milestones: set[int],
    pinned: set[int],
    deleted: int,
    final: int | None,
    keep_last_n: int,
) -> list[SaveRun]:
    """The saves as runs: the oldest ``deleted`` interval saves go, the rest stay."""
    kept_reason = Reason.keep_all if keep_last_n <= 0 else Reason.within_keep_last_n
    runs: list[SaveRun] = []
    for piece in pieces:
        if isinstance(piece, Span):
            gone = min(deleted, piece.count)
            deleted -= gone
            if gone:
                runs.append(_span_run(piece, 0, gone, False, Reason.beyond_keep_last_n))
            if piece.count - gone:
                runs += _kept_spans(piece, gone, piece.count, final, kept_reason)
            continue
        milestone, pin = piece in milestones, piece in pinned
        reason = (
            Reason.latest if piece == final else Reason.milestone if milestone else Reason.pinned
        )
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.steps is not None
            and (last.milestone, last.pinned, last.reason) == (milestone, pin, reason)
        ):
            runs[-1] = _listed((*last.steps, piece), milestone, pin, reason)
        else:
            runs.append(_listed((piece,), milestone, pin, reason))
    return runs


def _listed(steps: tuple[int, ...], milestone: bool, pinned: bool, reason: Reason) -> SaveRun:
    return SaveRun(
        first=steps[0],
        last=steps[-1],
        count=len(steps),
        every=None,
        steps=steps,
        milestone=milestone,
        pinned=pinned,
        survives=True,
        reason=reason,
    )


def _kept_spans(
    span: Span, start: int, stop: int, final: int | None, reason: Reason
) -> list[SaveRun]:
    """Saves ``start .. stop-1`` of ``span`` kept; the final save of the run is ``latest``."""
    if span.at(stop - 1) != final:
        return [_span_run(span, start, stop, True, reason)]
    head = [_span_run(span, start, stop - 1, True, reason)] if stop - 1 > start else []
    return [*head, _span_run(span, stop - 1, stop, True, Reason.latest)]


def _span_run(span: Span, start: int, stop: int, survives: bool, reason: Reason) -> SaveRun:
    return SaveRun(
        first=span.at(start),
        last=span.at(stop - 1),
        count=stop - start,
        every=span.every,
        steps=None,
        milestone=False,
        pinned=False,
        survives=survives,
        reason=reason,
    )
