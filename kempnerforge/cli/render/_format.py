"""The formatters: raw numbers of the library records as the few words people read.

Sizes in decimal units (``1.9 GB``), ages in whole units (``3 h ago``), token counts
(``52.4B``), floats (``0.01235``), counts with their noun, and the plain-text table every
command prints. Ages are relative to :func:`now_s`, which reads ``KF_CKPT_NOW_S`` (seconds since
the epoch) when it is set, so that tests and documentation examples print the same ages on every
run.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterable
from typing import Any

import click

__all__ = [
    "NOW_ENV",
    "human_age",
    "human_bytes",
    "human_count",
    "human_duration",
    "human_float",
    "now_s",
    "plural",
    "render_table",
    "shape_text",
    "sparkline",
    "step_note",
]

NOW_ENV = "KF_CKPT_NOW_S"


def now_s() -> float:
    """The current time, or ``$KF_CKPT_NOW_S`` when set (for reproducible ages)."""
    fixed = os.environ.get(NOW_ENV)
    if not fixed:
        return time.time()
    try:
        return float(fixed)
    except ValueError:
        raise click.UsageError(f"{NOW_ENV}={fixed!r} must be seconds since the epoch") from None


def human_age(age_s: float) -> str:
    """``42 s ago``, ``5 min ago``, ``3 h ago`` (below two days), ``12 d ago``; whole units.

    The one age formatter of ``kf-ckpt``: ``ls``'s age column and every retention detail use it.
    A negative age is ``in the future``, an unknown one (NaN) ``at an unknown time``.
    """
    if age_s < 0:
        return "in the future"
    return "at an unknown time" if age_s != age_s else f"{human_duration(age_s)} ago"


def human_duration(span_s: float) -> str:
    """``42 s``, ``5 min``, ``3 h`` (below two days), ``12 d``: :func:`human_age` without the
    ``ago``, for spans that are not ages (``dated 3 h ahead``); ``span_s`` is not negative."""
    for unit, size_s, below_s in (("s", 1, 60), ("min", 60, 3600), ("h", 3600, 172800)):
        if span_s < below_s:
            return f"{int(span_s // size_s)} {unit}"
    return f"{int(span_s // 86400)} d"


def human_bytes(n: int) -> str:
    """Decimal units, as ``du -h --si`` and disk quotas use: ``1.9 GB``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_count(n: int | None) -> str:
    """Token counts: ``950``, ``12.3k``, ``4.2M``, ``52.4B``, ``1.3T``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "k", "M", "B"):
        if abs(value) < 1000:
            return f"{n}" if not unit else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def human_float(value: float | None, digits: int = 4) -> str:
    """``0.01235``, ``1.235e+04``, ``nan``; ``-`` for None (undefined)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def plural(n: int, noun: str) -> str:
    """``1 checkpoint``, ``2 checkpoints``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def step_note(step: int | None) -> str:
    """`` (step 64)`` after a checkpoint's path; nothing for a checkpoint with no step."""
    return "" if step is None else f" (step {step})"


def shape_text(shape: Iterable[int]) -> str:
    """``[4096, 512]``; ``[]`` for a scalar."""
    return "[" + ", ".join(map(str, shape)) + "]"


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None]) -> str:
    """One block character per value, scaled between the row's own min and max.

    Undefined values (None, NaN, Inf) are blanks: ``[None, 0.5, 0.1, 0.05]`` -> `` █▂▁``; a
    constant row is flat, at the bottom when it is all zeros.
    """
    cells = [v if v is not None and math.isfinite(v) else None for v in values]
    known = [v for v in cells if v is not None]
    if not known:
        return " " * len(cells)
    low, high = min(known), max(known)
    span = high - low
    top = len(_SPARKS) - 1
    flat = 0 if high == 0 else top // 2
    return "".join(
        " " if v is None else _SPARKS[round((v - low) / span * top) if span else flat]
        for v in cells
    )


def render_table(rows: list[tuple[Any, ...]], headers: tuple[str, ...], align: str) -> str:
    """A plain-text table, byte-for-byte tabulate's ``simple`` format.

    ``align`` has one letter per column, ``r`` (numbers) or ``l``. Cells are rendered with
    ``str`` (None as empty). Every command prints its tables with this one renderer, written
    out here rather than calling tabulate, whose import and per-cell type sniffing cost about
    0.2 s on a 2,000-row ``kf-ckpt ls``: more than ``du -sb`` needs for the whole tree.
    ``tests/cli/test_render.py`` checks the output against tabulate.
    """
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row must have {len(headers)} cells, one per header")
    # Column by column, so that str() and the padding below run as C loops: at 2,000 rows a
    # Python-level loop over the 16,000 cells would cost more than the rest of the table.
    columns = []
    for column in zip(*rows, strict=True):
        types = set(map(type, column))
        if types <= {str}:
            text = list(column)
        elif type(None) in types:
            text = ["" if cell is None else str(cell) for cell in column]
        else:
            text = list(map(str, column))
        columns.append(text)
    # tabulate's minimum padding: every column is at least its header plus two characters wide.
    widths = [len(h) + 2 for h in headers]
    for i, cells in enumerate(columns):
        widths[i] = max(widths[i], max(map(len, cells)))
    # As tabulate does, an empty table left-aligns its headers.
    header = _pad(headers, widths, align if rows else "l" * len(headers))
    padded = [
        list(map(str.rjust if a == "r" else str.ljust, column, itertools.repeat(w)))
        for column, w, a in zip(columns, widths, align, strict=False)
    ]
    out = [header, "  ".join("-" * w for w in widths)]
    out += map(str.rstrip, map("  ".join, zip(*padded, strict=True)))
    return "\n".join(out)


def _pad(cells: Iterable[str], widths: Iterable[int], align: str) -> str:
    padded = (
        c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True)
    )
    return "  ".join(padded).rstrip()
