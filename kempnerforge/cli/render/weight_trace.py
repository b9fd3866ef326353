"""The ``kf-ckpt trace`` view of a
:class:`~kempnerforge.checkpoint.export.weight_trace.TraceResult`:
the table with sparklines of the relative changes, and the CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from kempnerforge.cli.render import human_float, render_table, sparkline

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.weight_trace import TraceResult, TraceRow

__all__ = ["plot_written", "trace_csv", "trace_text"]


def _cells(row: TraceRow, steps: tuple[int, ...]) -> tuple[object, ...]:
    changes = row.rel_change[1:]
    known = [
        (v, s)
        for v, s in zip(changes, steps[1:], strict=True)
        if v is not None and math.isfinite(v)
    ]
    peak = max(known, default=None, key=lambda vs: vs[0])
    return (
        row.name,
        human_float(row.l2[0]),
        human_float(row.l2[-1]),
        sparkline(changes),
        human_float(peak[0]) if peak else "-",
        "-" if peak is None else peak[1],
    )


def trace_text(result: TraceResult) -> str:
    """The steps line (milestones starred), one row per group then the model, and the legend."""
    first, last = result.steps[0], result.steps[-1]
    rows = [_cells(row, result.steps) for row in (*result.rows, result.total)]
    headers = (
        "name", f"l2@{first}", f"l2@{last}", "rel change", "max change", "at step",
    )  # fmt: skip
    marks = set(result.milestones)
    listed = " ".join(f"{s}*" if s in marks else str(s) for s in result.steps)
    lines = [
        f"{result.root}: {len(result.steps)} checkpoints, steps {listed}",
        render_table(rows, headers, "lrrlrr"),
    ]
    if marks:
        lines.append("* milestone of the checkpoint window")
    return "\n".join(lines)


def _csv(value: float | None) -> str:
    return "" if value is None else repr(value)


def trace_csv(result: TraceResult) -> str:
    """``step,name,l2,rel_change``, one line per (step, group); an undefined value is empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("step", "name", "l2", "rel_change"))
    for step, name, l2, rel in result.csv_rows():
        writer.writerow((step, name, _csv(l2), _csv(rel)))
    return out.getvalue()


def plot_written(path: Path) -> str:
    """The stderr line naming the figure ``--plot`` drew."""
    return f"kf-ckpt: wrote {path}"
