"""How far the model moved between two checkpoints, per tensor or per group, streamed.

``kf-ckpt diff`` renders :func:`diff_checkpoints`. For every tensor present in both checkpoints
with the same shape it accumulates, in float64 slices, ‖A‖², ‖B‖², ‖B − A‖², ⟨A, B⟩ and
``max |B − A|``. Groups (the first ``depth`` dotted components of the names) add those sums, so a
group's numbers are exact: the same as for its tensors concatenated into one vector. Tensors only
in A, only in B, or of different shapes are listed, never dropped silently. One batch of each
side is in memory at a time.

NaN or Inf values propagate (IEEE rules); the JSON document writes such results as null.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kempnerforge.checkpoint.export._model_records import TensorEntry
from kempnerforge.checkpoint.export._stream import (
    CHUNK_NUMEL,
    DEFAULT_INSPECT_BATCH_BYTES,
    ByteProgress,
    Source,
    finite_or_none,
    group_name,
    load_batch,
    open_source,
    plan_batches,
)
from kempnerforge.errors import ConfigError

__all__ = ["DiffResult", "DiffRow", "PairSums", "ShapeMismatch", "diff_checkpoints"]

DIFF_FORMAT = "kf-ckpt-diff"
DiffSort = Literal["rel_diff", "name"]


@dataclass(kw_only=True)
class PairSums:
    """The float64 sums that every diff number is derived from (they add across tensors)."""

    sq_a: float = 0.0
    sq_b: float = 0.0
    sq_diff: float = 0.0
    dot: float = 0.0
    max_abs_diff: float = 0.0

    def add(self, other: PairSums) -> None:
        self.sq_a += other.sq_a
        self.sq_b += other.sq_b
        self.sq_diff += other.sq_diff
        self.dot += other.dot
        # max() would drop a NaN depending on the order; keep it, as the sums do.
        if math.isnan(other.max_abs_diff) or other.max_abs_diff > self.max_abs_diff:
            self.max_abs_diff = other.max_abs_diff


def pair_sums(a: torch.Tensor, b: torch.Tensor) -> PairSums:
    """The sums of two loaded tensors of one shape, in float64 slices of bounded size."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    n = flat_a.numel()
    buf_a = torch.empty(min(n, CHUNK_NUMEL), dtype=torch.float64)
    buf_b = torch.empty_like(buf_a)
    sums = PairSums()
    for start in range(0, n, CHUNK_NUMEL):
        ca = buf_a[: min(CHUNK_NUMEL, n - start)]
        cb = buf_b[: ca.numel()]
        ca.copy_(flat_a[start : start + CHUNK_NUMEL])
        cb.copy_(flat_b[start : start + CHUNK_NUMEL])
        part = PairSums(sq_a=float(torch.dot(ca, ca)), sq_b=float(torch.dot(cb, cb)))
        part.dot = float(torch.dot(ca, cb))
        cb.sub_(ca)
        part.sq_diff = float(torch.dot(cb, cb))
        part.max_abs_diff = float(cb.abs_().max())
        sums.add(part)
    return sums


@dataclass(frozen=True, kw_only=True)
class DiffRow:
    """One tensor, or one group of tensors, compared."""

    name: str
    l2_a: float
    l2_b: float
    l2_diff: float
    rel_diff: float | None
    """``l2_diff / l2_a``; None when ``l2_a`` is 0."""
    cosine: float | None
    """⟨A, B⟩ / (‖A‖ ‖B‖); None when a norm is 0."""
    max_abs_diff: float

    @classmethod
    def from_sums(cls, name: str, s: PairSums) -> DiffRow:
        l2_a, l2_b = math.sqrt(s.sq_a), math.sqrt(s.sq_b)
        return cls(
            name=name,
            l2_a=l2_a,
            l2_b=l2_b,
            l2_diff=math.sqrt(s.sq_diff),
            rel_diff=math.sqrt(s.sq_diff) / l2_a if l2_a != 0 else None,
            cosine=s.dot / (l2_a * l2_b) if l2_a != 0 and l2_b != 0 else None,
            max_abs_diff=s.max_abs_diff,
        )

    def to_json(self, *, with_name: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name} if with_name else {}
        for key in ("l2_a", "l2_b", "l2_diff", "rel_diff", "cosine", "max_abs_diff"):
            data[key] = finite_or_none(getattr(self, key))
        return data


@dataclass(frozen=True, kw_only=True)
class ShapeMismatch:
    """A tensor present in both checkpoints with different shapes (not compared)."""

    name: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class DiffResult:
    """What :func:`diff_checkpoints` found."""

    path_a: Path
    step_a: int | None
    path_b: Path
    step_b: int | None
    rows: tuple[DiffRow, ...]
    """Sorted and cut as asked; ``total`` covers every matched tensor regardless."""
    total: DiffRow
    matched: int
    """Tensors compared."""
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]
    shape_mismatch: tuple[ShapeMismatch, ...]
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The ``kf-ckpt-diff`` document (format_version 1)."""
        return {
            "format": DIFF_FORMAT,
            "format_version": 1,
            "a": {"path": str(self.path_a), "step": self.step_a},
            "b": {"path": str(self.path_b), "step": self.step_b},
            "rows": [row.to_json() for row in self.rows],
            "total": self.total.to_json(with_name=False),
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "shape_mismatch": [
                {"name": m.name, "shape_a": list(m.shape_a), "shape_b": list(m.shape_b)}
                for m in self.shape_mismatch
            ],
        }


def diff_checkpoints(
    a: str | Path,
    b: str | Path,
    *,
    step_a: int | None = None,
    step_b: int | None = None,
    depth: int | None = None,
    sort: DiffSort = "rel_diff",
    top: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    batch_bytes: int = DEFAULT_INSPECT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> DiffResult:
    """Compare the model tensors of two checkpoints.

    Args:
        a, b: checkpoint directories, or roots (then ``step_a`` / ``step_b``, default the newest
            complete); ``a`` and ``b`` may be the same root with two steps.
        depth: group tensors by their first ``depth`` dotted name components (None: one row per
            tensor).
        sort: ``"rel_diff"`` (largest first, undefined last) or ``"name"``.
        top: keep only the first ``top`` rows after sorting.
        include, exclude: globs on dotted tensor names, applied to both sides.
        batch_bytes: stored bytes loaded at a time from each side.
        progress: called with ``(done_bytes, total_bytes)`` after each batch.

    Raises:
        CheckpointRootError, CheckpointNotFoundError: a side names no checkpoint.
        CorruptCheckpointError: a checkpoint is incomplete or its metadata is unreadable.
        ConfigError: bad ``depth``/``top``/``sort``, or the globs select no tensor.
        ExportError: a shard is missing or corrupt.

    Example:
        >>> result = diff_checkpoints("runs/a", "runs/a", step_a=0, step_b=64)  # doctest: +SKIP
        >>> result.rows[0].name, result.rows[0].rel_diff  # doctest: +SKIP
        ('layers.0', 0.042)
    """
    _check(depth, sort, top)
    with contextlib.ExitStack() as stack:
        source_a, notes_a = stack.enter_context(open_source(a, step_a, include, exclude))
        source_b, notes_b = stack.enter_context(open_source(b, step_b, include, exclude))
        return _diff(source_a, notes_a, source_b, notes_b, depth, sort, top, batch_bytes, progress)


def _diff(
    source_a: Source,
    notes_a: tuple[str, ...],
    source_b: Source,
    notes_b: tuple[str, ...],
    depth: int | None,
    sort: DiffSort,
    top: int | None,
    batch_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> DiffResult:
    by_name_b = {e.name: e for e in source_b.entries}
    names_a = {e.name for e in source_a.entries}
    pairs = [(e, by_name_b[e.name]) for e in source_a.entries if e.name in by_name_b]
    mismatch = tuple(
        ShapeMismatch(name=ea.name, shape_a=ea.shape, shape_b=eb.shape)
        for ea, eb in pairs
        if ea.shape != eb.shape
    )
    pairs = [(ea, eb) for ea, eb in pairs if ea.shape == eb.shape]
    matched_a = [ea for ea, _ in pairs]
    by_name_a = {e.name: e for e in matched_a}
    # Batches are planned on the larger side of each pair (the dtypes may differ).
    larger = [ea if ea.size_bytes >= eb.size_bytes else eb for ea, eb in pairs]
    bar = ByteProgress(sum(ea.size_bytes + eb.size_bytes for ea, eb in pairs), progress)
    sums: dict[str, PairSums] = {}
    for batch in plan_batches(larger, batch_bytes) if pairs else []:
        batch_a = [by_name_a[e.name] for e in batch]
        batch_b = [by_name_b[e.name] for e in batch]
        _diff_batch(source_a, source_b, batch_a, batch_b, sums)
        bar.add(sum(e.size_bytes for e in batch_a + batch_b))
    groups: dict[str, PairSums] = {}
    total = PairSums()
    for ea in matched_a:
        groups.setdefault(group_name(ea.name, depth), PairSums()).add(sums[ea.name])
        total.add(sums[ea.name])
    rows = [DiffRow.from_sums(name, s) for name, s in groups.items()]
    if sort == "name":
        rows.sort(key=lambda r: r.name)
    else:
        rows.sort(key=_rel_diff_order)
    return DiffResult(
        path_a=source_a.step_dir,
        step_a=source_a.step,
        path_b=source_b.step_dir,
        step_b=source_b.step,
        rows=tuple(rows[:top] if top is not None else rows),
        total=DiffRow.from_sums("total", total),
        matched=len(pairs),
        only_in_a=tuple(e.name for e in source_a.entries if e.name not in by_name_b),
        only_in_b=tuple(e.name for e in source_b.entries if e.name not in names_a),
        shape_mismatch=mismatch,
        notes=tuple(dict.fromkeys(notes_a + notes_b)),
    )


def _rel_diff_order(row: DiffRow) -> tuple[int, float, str]:
    # Largest first; undefined (l2_a = 0) and NaN last; ties by name for a stable order.
    value = row.rel_diff
    if value is None or math.isnan(value):
        return (1, 0.0, row.name)
    return (0, -value, row.name)


def _diff_batch(
    source_a: Source,
    source_b: Source,
    batch_a: list[TensorEntry],
    batch_b: list[TensorEntry],
    sums: dict[str, PairSums],
) -> None:
    # A function of its own so that both sides' tensors are freed before the next batch loads.
    loaded_a = load_batch(source_a.part, batch_a)
    loaded_b = load_batch(source_b.part, batch_b)
    for entry in batch_a:
        sums[entry.name] = pair_sums(loaded_a.pop(entry.name), loaded_b.pop(entry.name))


def _check(depth: int | None, sort: str, top: int | None) -> None:
    if depth is not None and depth < 1:
        raise ConfigError(f"group depth must be at least 1, got {depth}")
    if top is not None and top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    if sort not in ("rel_diff", "name"):
        raise ConfigError(f"sort must be 'rel_diff' or 'name', got {sort!r}")
