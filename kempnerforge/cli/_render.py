"""Rendering for ``kf-ckpt ls``, ``gc`` and ``plan``: tables for people, JSON documents for scripts.

The only place where sizes, token counts and ages become human text (``1.9 GB``, ``52.4B``,
``3 h ago``); the library records carry raw numbers. Each command module holds its own view
(which columns, which JSON fields) and builds it from the helpers here, so that the three
commands print the same things the same way. The JSON documents are described in
``docs/reference/json.rst``; change both together, and bump ``FORMAT_VERSION`` when a field
changes meaning or goes away.

Ages are relative to :func:`now_s`, which reads ``KF_CKPT_NOW_S`` (seconds since the epoch) when
it is set, so that tests and documentation examples print the same ages on every run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from kempnerforge.cli._text import escape
from kempnerforge.config.loader import config_to_dict
from kempnerforge.errors import KempnerForgeError, Remedy

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.records import Catalog
    from kempnerforge.checkpoint.store.retention import Reason
    from kempnerforge.checkpoint.store.selection import ConfigSelection

__all__ = [
    "FORMAT_VERSION",
    "NOW_ENV",
    "catalog_warnings",
    "config_document",
    "echo_json",
    "echo_warnings",
    "escape",
    "human_age",
    "human_bytes",
    "human_count",
    "human_duration",
    "human_float",
    "now_s",
    "plural",
    "reason_text",
    "render_table",
    "rule_text",
    "skipped_document",
    "sparkline",
]

NOW_ENV = "KF_CKPT_NOW_S"
FORMAT_VERSION = 1


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


_REASON_TEXT = {
    "latest": "latest",
    "milestone": "dynamic milestone",
    "corrupt": "corrupt: never deleted automatically",
    "in_flight": "in flight: a save may be writing it",
    "unreadable": "unreadable: kept until it can be judged",
    "within_keep_last_n": "within keep_last_n={}",
    "newest_complete": "newest complete",
    "keep_all": "keep_last_n={} keeps all",
    "pinned": "pinned",
    "no_policy": "no retention policy",
    "beyond_keep_last_n": "beyond keep_last_n={}",
    "abandoned_incomplete": "abandoned incomplete save",
}


def reason_text(reason: Reason, keep_last_n: int) -> str:
    """A retention reason in words, with the keep_last_n it was planned with."""
    text = _REASON_TEXT.get(str(reason))
    return str(reason).replace("_", " ") if text is None else text.format(keep_last_n)


def echo_warnings(lines: Iterable[str]) -> None:
    """Each line as ``kf-ckpt: warning: ...`` on stderr (control characters escaped)."""
    for line in lines:
        click.echo(f"kf-ckpt: warning: {escape(line)}", err=True)


def echo_json(document: dict[str, Any]) -> None:
    """One JSON document on one line of stdout (JSON Lines when appended to a log).

    Compact on purpose: the C encoder writes 2,000 checkpoints in milliseconds, where an
    indented dump takes a tenth of a second; pipe through ``python -m json.tool`` to read it.
    """
    click.echo(json.dumps(document))


def catalog_warnings(catalog: Catalog) -> list[str]:
    """Skipped entries (not the toolkit's own), an ignored ``latest``, unreadable metadata."""
    lines = [
        f"skipped {s.name}: {s.reason}"
        for s in catalog.skipped
        if not s.toolkit_entry and not s.dcp_checkpoint
    ]
    foreign = [s for s in catalog.skipped if s.dcp_checkpoint]
    if foreign:
        names = ", ".join(s.name for s in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        lines.append(
            f"{plural(len(foreign), 'DCP checkpoint')} not named step_<N> ({names}), written by "
            f"another tool (torchtitan writes step-N) or renamed: not managed here (gc never "
            f"touches them), but 'kf-ckpt export' and 'kf-ckpt show' work on each, e.g. "
            f"'kf-ckpt show {foreign[-1].path}'"
        )
    lines += catalog.warnings
    for info in catalog.checkpoints:
        if info.warnings:
            lines += [f"{info.name}: {warning}" for warning in info.warnings]
        if info.corrupt:
            lines.append(
                f"{info.name} is corrupt ({info.incomplete_reason}); it is never deleted "
                f"automatically: inspect it, then remove it by hand (rm -r {info.path})"
            )
    return lines


def render_table(rows: list[tuple[Any, ...]], headers: tuple[str, ...], align: str) -> str:
    """A plain-text table, byte-for-byte tabulate's ``simple`` format.

    ``align`` has one letter per column, ``r`` (numbers) or ``l``. Cells are rendered with
    ``str`` (None as empty). Written out here rather than calling tabulate, whose import and
    per-cell type sniffing cost about 0.2 s on a 2,000-row ``kf-ckpt ls``: more than ``du -sb``
    needs for the whole tree. ``tests/cli/test_render.py`` checks the output against tabulate.
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


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def config_document(selection: ConfigSelection) -> dict[str, Any]:
    path = selection.source_path
    return {
        "source": selection.source,
        "path": None if path is None else str(path),
        "checkpoint": config_to_dict(selection.config),
        "has_policy": selection.has_policy,
    }


def skipped_document(catalog: Catalog) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "path": str(s.path), "reason": s.reason, "toolkit_entry": s.toolkit_entry}
        for s in catalog.skipped
    ]


def human_bytes(n: int) -> str:
    """Decimal units, as ``du -h --si`` and disk quotas use: ``1.9 GB``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


_RULE_TEXT = {
    "model_group": "the 'model' group",
    "outside_non_model_groups": "the rule for checkpoints without a 'model' group "
    "(everything outside optimizer, lr_scheduler, dataloader, train_state, ...)",
    "include_patterns": "--include",
}


def rule_text(rule: str) -> str:
    """How ``show`` names the rule that chose a checkpoint's model part."""
    return _RULE_TEXT.get(str(rule), str(rule))


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


def human_float(value: float | None, digits: int = 4) -> str:
    """``0.01235``, ``1.235e+04``, ``nan``; ``-`` for None (undefined)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


REMEDY_HINTS: dict[Remedy, str] = {
    Remedy.force: "; pass --force to replace it",
    Remedy.wait_lock: ", or wait for it with --wait-lock SECONDS",
    Remedy.config_file: "; pass the run's job file with --config",
    Remedy.drop_step: "; drop --step or pass the root",
}
"""The command-line form of each remedy a library error names (its message names no flag)."""


def error_text(exc: KempnerForgeError) -> str:
    """A library error as the CLI prints it: the message, then the flag that helps, if any."""
    return str(exc) + (REMEDY_HINTS[exc.remedy] if exc.remedy is not None else "")
