"""The ``kf-ckpt stats`` view of a :class:`~kempnerforge.checkpoint.export.stats.CheckpointStats`:
the per-tensor table with its totals line, and the ``--fail-on-nonfinite`` error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kempnerforge.cli.render import human_float, render_table, shape_text, step_note

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.stats import CheckpointStats

__all__ = ["nonfinite_error", "stats_text"]

_HEADERS = ("name", "shape", "dtype", "l2_norm", "mean", "std", "min", "max", "abs_max",
            "nan", "inf", "zeros")  # fmt: skip


def stats_text(result: CheckpointStats) -> str:
    """The source line, one row per tensor, then the totals over the model."""
    rows = [
        (
            t.name,
            shape_text(t.shape),
            t.dtype,
            *(human_float(v) for v in (t.l2_norm, t.mean, t.std, t.min, t.max, t.abs_max)),
            t.nan_count,
            t.inf_count,
            t.zero_count,
        )
        for t in result.tensors
    ]
    total = result.total
    return "\n".join(
        [
            f"{result.source}{step_note(result.step)}",
            render_table(rows, _HEADERS, "lll" + "r" * 9),
            f"total: {total.tensors} tensors, {total.numel:,} values, "
            f"l2_norm {human_float(total.l2_norm)}, {total.nan_count} NaN, "
            f"{total.inf_count} Inf",
        ]
    )


def nonfinite_error(result: CheckpointStats) -> str:
    """Why ``--fail-on-nonfinite`` fails: the NaN and Inf counts and where to look."""
    return (
        f"{result.source} holds {result.total.nan_count} NaN and "
        f"{result.total.inf_count} Inf values; see the nan and inf columns"
    )
