"""Which steps a run saves, without listing them: interval spans and the window's saves.

The interval saves of a run are two arithmetic progressions (before and after the dynamic
window); the window's own saves are few (``power2`` is enumerated directly, any other strategy is
asked once per step of the window). :mod:`.simulate` builds its forecast from these pieces, so
that its cost never depends on ``max_steps``. Pure and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from kempnerforge.config.checkpoint import POWER2, CheckpointConfig

__all__ = [
    "Piece",
    "Span",
    "check_max_steps",
    "interval_spans",
    "is_saved",
    "split_span",
    "window_saves",
]


@dataclass(frozen=True)
class Span:
    """Evenly spaced interval saves ``first, first + every, ...`` (``count`` of them)."""

    first: int
    every: int
    count: int

    def at(self, i: int) -> int:
        return self.first + i * self.every

    @property
    def last(self) -> int:
        return self.at(self.count - 1)


Piece = Span | int
"""A stretch of plain interval saves, or one save kept for good (a milestone or a pin)."""


def interval_spans(config: CheckpointConfig, max_steps: int) -> tuple[Span, Span]:
    """The interval saves before the window and after it (the whole run without a window)."""
    interval, window = config.interval, config.dyn_ckpt_window
    if window is None:
        return Span(interval, interval, max_steps // interval), Span(interval, interval, 0)
    before_last = min(window.start - 1, max_steps)
    before = Span(interval, interval, max(0, before_last // interval))
    first_after = (window.stop // interval + 1) * interval
    after = Span(first_after, interval, max(0, (max_steps - first_after) // interval + 1))
    return before, after


def window_saves(config: CheckpointConfig, max_steps: int) -> list[int]:
    """The saves inside the window (its strategy decides): few for ``power2``, which is
    enumerated directly; any other strategy is asked once per step of the window."""
    window = config.dyn_ckpt_window
    if window is None:
        return []
    lo, hi = max(1, window.start), min(window.stop, max_steps)
    if window.strategy == POWER2:
        candidates = [window.start] if window.start >= 1 else []
        offset = 1
        while window.start + offset <= hi:
            candidates.append(window.start + offset)
            offset *= 2
        return [s for s in candidates if lo <= s <= hi and window.is_milestone(s)]
    return [s for s in range(lo, hi + 1) if window.is_milestone(s)]


def is_saved(config: CheckpointConfig, max_steps: int, step: int) -> bool:
    """Does a run of ``max_steps`` steps save ``step``? (Without listing its saves.)"""
    return 1 <= step <= max_steps and config.should_save(step)


def check_max_steps(max_steps: int) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")


def split_span(span: Span, keepers: list[int]) -> list[Piece]:
    """``span`` with the (sorted) ``keepers`` on its grid cut out as pieces of their own."""
    pieces: list[Piece] = []
    start = 0
    for step in keepers:
        i = (step - span.first) // span.every
        if span.count and 0 <= i < span.count and span.at(i) == step:
            if i > start:
                pieces.append(Span(span.at(start), span.every, i - start))
            pieces.append(step)
            start = i + 1
    if span.count > start:
        pieces.append(Span(span.at(start), span.every, span.count - start))
    return pieces
