"""Weight norms and relative changes across a run's checkpoints, each read once, in bounded memory.

``kf-ckpt trace`` renders :func:`trace_checkpoints`. For the selected complete checkpoints of a
root, in step order, it gives per group (the first ``depth`` dotted components of the tensor
names; one group per tensor by default) and for the whole model the L2 norm at each step and the
relative change from the previous selected step, ‖θᵢ − θᵢ₋₁‖ / ‖θᵢ₋₁‖.

The loop runs over batches of tensor names outside and over the checkpoints inside: a batch is
loaded from each checkpoint in turn and compared with the same batch of the previous one, which
is then dropped. Each checkpoint is read exactly once and memory holds about two batches,
whatever the number of checkpoints. Sums are float64, and a group adds its tensors' sums, so its
numbers are those of its tensors as one vector.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
    plan_batches,
    source_of,
)
from kempnerforge.checkpoint.export._trace_select import ChosenSteps, select_steps
from kempnerforge.checkpoint.store.resolve import leased
from kempnerforge.errors import ConfigError

__all__ = ["StepSelection", "TraceResult", "TraceRow", "trace_checkpoints"]

TRACE_FORMAT = "kf-ckpt-trace"
StepSelection = Literal["all", "milestones"] | Sequence[int]


@dataclass(frozen=True, kw_only=True)
class TraceRow:
    """One group (or the whole model) across the selected steps."""

    name: str
    l2: tuple[float | None, ...]
    """The norm at each step (None where no tensor of the group is in that checkpoint)."""
    rel_change: tuple[float | None, ...]
    """‖θᵢ − θᵢ₋₁‖ / ‖θᵢ₋₁‖ over the tensors in both; None at the first step or undefined."""


@dataclass(frozen=True, kw_only=True)
class TraceResult:
    """What :func:`trace_checkpoints` found."""

    root: Path
    steps: tuple[int, ...]
    milestones: tuple[int, ...]
    """The selected steps that are milestones of the run's checkpoint window."""
    rows: tuple[TraceRow, ...]
    total: TraceRow
    size_bytes: int
    """Stored bytes read."""
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``kf-ckpt-trace`` document (format_version 1); non-finite values become null."""
        return {
            "format": TRACE_FORMAT,
            "format_version": 1,
            "root": str(self.root),
            "steps": list(self.steps),
            "rows": [{"name": r.name, **_series(r)} for r in self.rows],
            "total": _series(self.total),
        }

    def csv_rows(self) -> Iterator[tuple[int, str, float | None, float | None]]:
        """``(step, group, l2, rel_change)`` for every step and group, the total named ``total``.

        None where undefined; NaN and Inf are kept (CSV, unlike JSON, can carry them)."""
        for i, step in enumerate(self.steps):
            for row in (*self.rows, self.total):
                yield step, row.name, row.l2[i], row.rel_change[i]


def _series(row: TraceRow) -> dict[str, list[float | None]]:
    return {
        "l2": [finite_or_none(v) for v in row.l2],
        "rel_change": [finite_or_none(v) for v in row.rel_change],
    }


def trace_checkpoints(
    root: str | Path,
    *,
    steps: StepSelection = "all",
    depth: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    batch_bytes: int = DEFAULT_INSPECT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> TraceResult:
    """Trace the weight norms and relative changes across the checkpoints of a root.

    Args:
        root: a checkpoint root (the directory holding ``step_<N>`` checkpoints).
        steps: ``"all"`` complete checkpoints, the window's ``"milestones"``, or a list of
            steps. Incomplete checkpoints are skipped with a note.
        depth: group tensors by their first ``depth`` dotted name components (None: one group
            per tensor).
        include, exclude: globs on dotted tensor names.
        batch_bytes: stored bytes loaded at a time from one checkpoint (two are held).
        progress: called with ``(done_bytes, total_bytes)`` after each batch.

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        CheckpointNotFoundError: a listed step has no checkpoint, or nothing complete is selected.
        CorruptCheckpointError: a checkpoint's metadata is unreadable.
        ConfigError: a bad ``depth`` or ``steps``, or the globs select no tensor.
        ExportError: a shard is missing or corrupt.

    Example:
        >>> result = trace_checkpoints("runs/a", steps="milestones", depth=2)  # doctest: +SKIP
        >>> result.steps, result.total.rel_change  # doctest: +SKIP
        ((0, 1, 2, 4, 8), (None, 0.012, 0.010, 0.015, 0.021))
    """
    if depth is not None and depth < 1:
        raise ConfigError(f"group depth must be at least 1, got {depth}")
    chosen = select_steps(Path(root), steps)
    with contextlib.ExitStack() as stack:
        for path in chosen.paths:
            stack.enter_context(leased(path))
        return _trace(chosen, include, exclude, depth, batch_bytes, progress)


def _trace(
    chosen: ChosenSteps,
    include: Sequence[str],
    exclude: Sequence[str],
    depth: int | None,
    batch_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> TraceResult:
    notes = list(chosen.notes)
    sources: list[Source] = []
    for path in chosen.paths:
        source, source_notes = source_of(path, include, exclude)
        sources.append(source)
        notes += [n for n in source_notes if n not in notes]
    union: dict[str, TensorEntry] = {}
    for source in sources:
        for entry in source.entries:
            kept = union.get(entry.name)
            if kept is None or entry.size_bytes > kept.size_bytes:
                union[entry.name] = entry
    n = len(sources)
    sq: dict[str, list[float | None]] = {name: [None] * n for name in union}
    dsq: dict[str, list[float | None]] = {name: [None] * n for name in union}
    lookup = [{e.name: e for e in s.entries} for s in sources]
    bar = ByteProgress(sum(s.size_bytes for s in sources), progress)
    for batch in plan_batches(list(union.values()), batch_bytes):
        previous: dict[str, torch.Tensor] = {}
        for i, source in enumerate(sources):
            entries = [lookup[i][e.name] for e in batch if e.name in lookup[i]]
            previous = _trace_batch(source, entries, previous, i, sq, dsq, notes)
            bar.add(sum(e.size_bytes for e in entries))
        del previous
    names = list(union)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_name(name, depth), []).append(name)
    return TraceResult(
        root=chosen.root,
        steps=chosen.steps,
        milestones=chosen.milestones,
        rows=tuple(_row(g, members, sq, dsq, n) for g, members in groups.items()),
        total=_row("total", names, sq, dsq, n),
        size_bytes=bar.total,
        notes=tuple(notes),
    )


def _trace_batch(
    source: Source,
    entries: list[TensorEntry],
    previous: dict[str, torch.Tensor],
    i: int,
    sq: dict[str, list[float | None]],
    dsq: dict[str, list[float | None]],
    notes: list[str],
) -> dict[str, torch.Tensor]:
    loaded = load_batch(source.part, entries) if entries else {}
    for name, tensor in loaded.items():
        before = previous.get(name)
        if before is not None and before.shape != tensor.shape:
            notes.append(
                f"{name!r} changes shape at step {source.step} "
                f"({list(before.shape)} -> {list(tensor.shape)}); its change there is left out"
            )
            before = None
        sq[name][i], dsq[name][i] = _sums(tensor, before)
    return loaded


def _sums(tensor: torch.Tensor, before: torch.Tensor | None) -> tuple[float, float | None]:
    """‖t‖² and ‖t − before‖² in float64, a slice at a time."""
    flat = tensor.reshape(-1)
    prev = None if before is None else before.reshape(-1)
    if prev is not None and prev.dtype == torch.bool:
        prev = prev.to(torch.uint8)  # float64 - bool is not defined
    count = flat.numel()
    buffer = torch.empty(min(count, CHUNK_NUMEL), dtype=torch.float64)
    sumsq = 0.0
    diffsq = None if prev is None else 0.0
    for start in range(0, count, CHUNK_NUMEL):
        chunk = buffer[: min(CHUNK_NUMEL, count - start)]
        chunk.copy_(flat[start : start + CHUNK_NUMEL])
        sumsq += float(torch.dot(chunk, chunk))
        if prev is not None and diffsq is not None:
            chunk.sub_(prev[start : start + CHUNK_NUMEL])  # promoted to float64 in the kernel
            diffsq += float(torch.dot(chunk, chunk))
    return sumsq, diffsq


def _row(
    name: str,
    members: list[str],
    sq: dict[str, list[float | None]],
    dsq: dict[str, list[float | None]],
    n: int,
) -> TraceRow:
    l2: list[float | None] = []
    rel: list[float | None] = []
    for i in range(n):
        present = [s for m in members if (s := sq[m][i]) is not None]
        l2.append(math.sqrt(sum(present)) if present else None)
        # Over the tensors in both checkpoints: moved distance over their previous norm.
        both = [m for m in members if dsq[m][i] is not None]
        before = sum(sq[m][i - 1] or 0.0 for m in both) if i else 0.0
        moved = sum(dsq[m][i] or 0.0 for m in both)
        rel.append(math.sqrt(moved) / math.sqrt(before) if both and before != 0 else None)
    return TraceRow(name=name, l2=tuple(l2), rel_change=tuple(rel))
