"""Preview a run before it starts: which steps it saves, what retention keeps, peak disk use.

A pure function of a :class:`~kempnerforge.config.checkpoint.CheckpointConfig` and a step count
(no filesystem, no clock, no torch), behind ``kf-ckpt plan``. The run saves at every step
``1 .. max_steps`` where :meth:`CheckpointConfig.should_save` is true, as the training loop asks it
after each optimizer step. After each save, retention runs on what is on disk; the simulation
replays that with the real :func:`~kempnerforge.checkpoint.store.retention.plan_retention` on a
synthetic :class:`~kempnerforge.checkpoint.store.catalog.Catalog`, so it cannot drift from the rules
the manager and ``kf-ckpt gc`` apply.

The peak counts the moment a new save exists and retention has not run on it yet: the checkpoints
kept by the previous round plus the new one (with async saves, the one in flight). That is the
number a disk quota must hold.

Long runs stay fast (10^7 steps with an interval of 1000 take well under a second): save steps
are enumerated from the window and the interval, not by testing every step, and two shortcuts
skip rounds whose outcome is already known. A stretch of rounds that deletes nothing is checked
with one plan over the whole stretch (retention that keeps a set keeps each of its prefixes);
once a stretch of evenly spaced interval saves reaches a steady state (each round deletes the
oldest of the same number of trailing saves), the rest of the stretch follows by translation.
The last round of every skipped stretch is replayed for real, and if it disagrees the whole
simulation is run again round by round.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.store.catalog import Catalog, CheckpointInfo
from kempnerforge.checkpoint.store.files import LatestLink
from kempnerforge.checkpoint.store.layout import step_dir_name
from kempnerforge.checkpoint.store.pins import Pin
from kempnerforge.checkpoint.store.retention import Reason, RetentionPlan, plan_retention
from kempnerforge.config.checkpoint import POWER2, CheckpointConfig

__all__ = ["RunSimulation", "SimulatedSave", "save_steps", "simulate_run"]


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
class RunSimulation:
    """What a run of ``max_steps`` steps saves and keeps, and its peak disk use."""

    max_steps: int
    saves: tuple[SimulatedSave, ...]
    """Every save, in step order."""
    max_on_disk: int
    """The most checkpoints on disk at one moment (kept ones plus the save just written)."""
    max_on_disk_step: int | None
    """The first save at which that peak is reached (None when the run saves nothing)."""
    ckpt_size_bytes: int | None = None
    """Size of one checkpoint, when given."""

    @property
    def save_steps(self) -> tuple[int, ...]:
        """The steps that save, in order."""
        return tuple(s.step for s in self.saves)

    @property
    def milestones(self) -> tuple[int, ...]:
        """The saves that are dynamic milestones (never deleted by retention)."""
        return tuple(s.step for s in self.saves if s.milestone)

    @property
    def survivors(self) -> tuple[int, ...]:
        """The checkpoints still on disk when the run ends."""
        return tuple(s.step for s in self.saves if s.survives)

    @property
    def peak_disk_bytes(self) -> int | None:
        """``max_on_disk * ckpt_size_bytes``, or None without a checkpoint size."""
        if self.ckpt_size_bytes is None:
            return None
        return self.max_on_disk * self.ckpt_size_bytes


def save_steps(config: CheckpointConfig, max_steps: int) -> list[int]:
    """The steps in ``1 .. max_steps`` at which ``config.should_save`` is true, in order.

    Enumerated from the window and the interval directly; a window with a custom strategy is
    asked step by step over ``[start, stop]`` only.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    interval, window = config.interval, config.dyn_ckpt_window
    if window is None:
        return list(range(interval, max_steps + 1, interval))
    lo, hi = max(1, window.start), min(window.stop, max_steps)
    if window.strategy == POWER2:  # enumerated directly; other strategies are asked per step
        candidates: list[int] = [window.start] if window.start >= 1 else []
        offset = 1
        while window.start + offset <= hi:
            candidates.append(window.start + offset)
            offset *= 2
        inside = [s for s in candidates if lo <= s <= hi and window.is_milestone(s)]
    else:
        inside = [s for s in range(lo, hi + 1) if window.is_milestone(s)]
    before = range(interval, min(window.start - 1, max_steps) + 1, interval)
    first_after = (window.stop // interval + 1) * interval
    after = range(first_after, max_steps + 1, interval)
    return [*before, *inside, *after]


def simulate_run(
    config: CheckpointConfig,
    max_steps: int,
    *,
    ckpt_size_bytes: int | None = None,
    pins: Collection[int] = (),
) -> RunSimulation:
    """Replay the saves and retention rounds of a run of ``max_steps`` steps.

    Args:
        config: the run's checkpoint config (interval, window, keep_last_n).
        max_steps: the number of training steps; saves happen at steps ``1 .. max_steps``.
        ckpt_size_bytes: size of one checkpoint, for the peak disk use.
        pins: steps pinned as soon as they are saved (a step the run never saves pins nothing).

    Example:
        >>> from kempnerforge.config import CheckpointConfig
        >>> sim = simulate_run(CheckpointConfig(interval=100, keep_last_n=2), 500)
        >>> sim.save_steps, sim.survivors, sim.max_on_disk
        ((100, 200, 300, 400, 500), (400, 500), 3)
    """
    steps = save_steps(config, max_steps)
    pinned = frozenset(pins)
    try:
        result = _Replay(config, steps, shortcuts=True, pins=pinned).run()
    except _ShortcutMismatch:
        result = _Replay(config, steps, shortcuts=False, pins=pinned).run()
    fates, peak, peak_step = result
    saves = tuple(
        SimulatedSave(
            step=step,
            milestone=config.is_dynamic_milestone(step),
            survives=fates[step][0],
            reason=fates[step][1],
            pinned=step in pinned,
        )
        for step in steps
    )
    return RunSimulation(
        max_steps=max_steps,
        saves=saves,
        max_on_disk=peak,
        max_on_disk_step=peak_step,
        ckpt_size_bytes=ckpt_size_bytes,
    )


_PIN = Pin(note="pinned in the forecast")


class _ShortcutMismatch(Exception):
    """A skipped stretch did not end where the real retention round ends."""


_Fates = dict[int, tuple[bool, Reason]]
_Shape = tuple[tuple[int, ...], int, Reason]


class _Replay:
    """Round-by-round replay of saves and retention (see the module docstring)."""

    def __init__(
        self,
        config: CheckpointConfig,
        steps: list[int],
        *,
        shortcuts: bool,
        pins: frozenset[int] = frozenset(),
    ) -> None:
        self.config = config
        self.pins = pins
        self.steps = steps
        self.shortcuts = shortcuts
        self.root = Path(config.dir)
        self.kept: list[int] = []
        self.last_plan: RetentionPlan | None = None
        self.fates: _Fates = {}
        self.peak = 0
        self.peak_step: int | None = None
        self.infos: dict[tuple[int, bool], CheckpointInfo] = {}
        self.run_start = self._regular_run_starts()

    def run(self) -> tuple[_Fates, int, int | None]:
        steps, i, stride = self.steps, 0, 1
        previous: _Shape | None = None
        while i < len(steps):
            plan = self._round([*self.kept, steps[i]])
            if self.shortcuts and not plan.to_delete:
                previous = None
                jumped, stride = self._gallop(i, stride)
                i += jumped + 1
                continue
            shape = self._steady_shape(i, plan)
            if self.shortcuts and shape is not None and shape == previous:
                i = self._skip_steady(i, shape)
                shape = None
            previous = shape
            i += 1
        if self.last_plan is not None:
            for decision in self.last_plan.to_keep:
                self.fates[decision.step] = (True, decision.reason)
        return self.fates, self.peak, self.peak_step

    def _catalog(self, steps: list[int]) -> Catalog:
        newest = steps[-1]
        infos = tuple(self._info(step, is_latest=step == newest) for step in steps)
        latest = LatestLink(step=newest, target=step_dir_name(newest))
        return Catalog(root=self.root, checkpoints=infos, skipped=(), latest=latest, warnings=())

    def _info(self, step: int, *, is_latest: bool) -> CheckpointInfo:
        """A complete checkpoint of ``step`` as the manager writes it (cached: runs are long)."""
        info = self.infos.get((step, is_latest))
        if info is None:
            info = CheckpointInfo(
                step=step,
                path=self.root / step_dir_name(step),
                complete=True,
                incomplete_reason=None,
                is_latest=is_latest,
                tokens_seen=None,
                dynamic_milestone=self.config.is_dynamic_milestone(step),
                recorded_config=None,
                size_bytes=0,
                file_count=0,
                mtime_s=0.0,
                pin=_PIN if step in self.pins else None,
            )
            self.infos[(step, is_latest)] = info
        return info

    def _round(self, on_disk: list[int]) -> RetentionPlan:
        """The newest of ``on_disk`` was just saved (and is latest): one retention round."""
        return self._commit(on_disk, plan_retention(self._catalog(on_disk), self.config))

    def _commit(self, on_disk: list[int], plan: RetentionPlan) -> RetentionPlan:
        if len(on_disk) > self.peak:
            self.peak, self.peak_step = len(on_disk), on_disk[-1]
        for decision in plan.to_delete:
            self.fates[decision.step] = (False, decision.reason)
        self.kept = [d.step for d in plan.to_keep]
        self.last_plan = plan
        return plan

    def _gallop(self, i: int, stride: int) -> tuple[int, int]:
        """After a round that deleted nothing, jump over rounds that delete nothing either.

        One plan over ``kept + the next saves`` that deletes nothing stands for every round in
        between. Returns how many saves after ``i`` were consumed and the stride for next time.
        """
        jumped = 0
        while i + jumped + 1 < len(self.steps):
            first = i + jumped + 1
            ahead = self.steps[first : first + stride * 2]
            on_disk = [*self.kept, *ahead]
            plan = plan_retention(self._catalog(on_disk), self.config)
            if plan.to_delete:
                return jumped, max(1, stride // 2)
            self._commit(on_disk, plan)
            jumped += len(ahead)
            stride *= 2
        return jumped, stride

    def _regular_run_starts(self) -> list[int]:
        """For each save, the index where its stretch of evenly spaced plain saves begins."""
        starts: list[int] = []
        config, steps = self.config, self.steps
        window = config.dyn_ckpt_window
        for k, step in enumerate(steps):
            plain = (
                not config.is_dynamic_milestone(step)
                and not (window and window.contains(step))
                and step not in self.pins
            )
            if not plain:
                starts.append(-1)
            elif k and starts[k - 1] >= 0 and step - steps[k - 1] == config.interval:
                starts.append(starts[k - 1])
            else:
                starts.append(k)
        return starts

    def _steady_shape(self, i: int, plan: RetentionPlan) -> _Shape | None:
        """(older kept steps, trailing kept saves, reason) when round ``i`` deleted exactly the save
        just before its trailing run; None when the round does not look steady."""
        start = self.run_start[i]
        deleted = plan.to_delete
        if start < 0 or len(deleted) != 1:
            return None
        tail = 0
        while (
            tail < len(self.kept)
            and i - tail >= start
            and self.kept[-1 - tail] == self.steps[i - tail]
        ):
            tail += 1
        if i - tail < start or deleted[0].step != self.steps[i - tail]:
            return None
        return tuple(self.kept[: len(self.kept) - tail]), tail, deleted[0].reason

    def _skip_steady(self, i: int, shape: _Shape) -> int:
        """Fill in the rounds up to the end of the stretch; replay its last round for real."""
        fixed, tail, reason = shape
        end = i
        while end + 1 < len(self.steps) and self.run_start[end + 1] == self.run_start[i]:
            end += 1
        if end == i:
            return i
        for k in range(i + 1, end):
            self.fates[self.steps[k - tail]] = (False, reason)
        plan = self._round([*fixed, *self.steps[end - tail : end + 1]])
        expected = [*fixed, *self.steps[end - tail + 1 : end + 1]]
        if self.kept != expected or [d.step for d in plan.to_delete] != [self.steps[end - tail]]:
            raise _ShortcutMismatch
        return end
