"""The ``kf-ckpt diff`` view of a :class:`~kempnerforge.checkpoint.export.diff.DiffResult`:
the two sides, the table, and what did not match."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kempnerforge.cli.render import human_float, render_table, step_note

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.diff import DiffResult, DiffRow

__all__ = ["diff_text"]

_HEADERS = ("name", "l2_a", "l2_b", "l2_diff", "rel_diff", "cosine", "max_abs_diff")


def _cells(row: DiffRow) -> tuple[str, ...]:
    numbers = (row.l2_a, row.l2_b, row.l2_diff, row.rel_diff, row.cosine, row.max_abs_diff)
    return (row.name, *map(human_float, numbers))


def diff_text(result: DiffResult, *, sort: str, top: int | None) -> str:
    """A and B, one row per tensor or group then the total, and the unmatched tensors.

    ``sort`` and ``top`` are the options the rows were chosen with (named under the table when
    ``top`` cut it).
    """
    rows = [_cells(row) for row in (*result.rows, result.total)]
    lines = [
        f"A: {result.path_a}{step_note(result.step_a)}",
        f"B: {result.path_b}{step_note(result.step_b)}",
        render_table(rows, _HEADERS, "l" + "r" * 6),
    ]
    if top is not None:
        groups = len({r.name for r in result.rows})
        lines.append(f"(first {groups} rows by {sort}; total over all {result.matched} tensors)")
    if result.only_in_a:
        lines.append(f"only in A ({len(result.only_in_a)}): {', '.join(result.only_in_a)}")
    if result.only_in_b:
        lines.append(f"only in B ({len(result.only_in_b)}): {', '.join(result.only_in_b)}")
    lines += [
        f"shape mismatch: {m.name} {list(m.shape_a)} in A, {list(m.shape_b)} in B"
        for m in result.shape_mismatch
    ]
    return "\n".join(lines)
