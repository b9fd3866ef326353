"""Small formatters of the inspection views (``show``, ``stats``, ``diff``, ``trace``)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["shape_text", "step_note"]


def step_note(step: int | None) -> str:
    """`` (step 64)`` after a checkpoint's path; nothing for a checkpoint with no step."""
    return "" if step is None else f" (step {step})"


def shape_text(shape: Iterable[int]) -> str:
    """``[4096, 512]``; ``[]`` for a scalar."""
    return "[" + ", ".join(map(str, shape)) + "]"
