"""The ``kf-ckpt pin`` and ``kf-ckpt unpin`` views: one line saying what changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.pins import PinResult, UnpinResult

__all__ = ["pin_text", "unpin_text"]


def pin_text(result: PinResult) -> str:
    """``pinned step 1500 (runs/a/step_1500): best eval loss``, or ``updated the pin of ...``."""
    verb = "updated the pin of" if result.previous is not None else "pinned"
    note_text = f": {result.pin.note}" if result.pin.note else ""
    return f"{verb} step {result.step} ({result.path}){note_text}"


def unpin_text(result: UnpinResult) -> str:
    """``unpinned step 1500 (...) (note was: ...)``, or that it was not pinned."""
    if result.removed is None:
        return f"step {result.step} ({result.path}) is not pinned; nothing to do"
    note_text = f" (note was: {result.removed.note})" if result.removed.note else ""
    return f"unpinned step {result.step} ({result.path}){note_text}"
