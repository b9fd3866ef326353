"""Read the model tensors of checkpoints in bounded batches for inspection (stats, diff, trace).

The same reader as export: the model part is chosen from the DCP metadata alone, narrowed by
include/exclude globs, and loaded with ``dcp.load`` into preallocated tensors of the stored dtype,
a batch of at most ``batch_bytes`` at a time (or one tensor, when a single tensor is bigger).
Statistics are accumulated in float64 over slices of :data:`CHUNK_NUMEL` elements, so the float64
working memory is a few MiB whatever the tensor size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kempnerforge.checkpoint.export._dcp_meta import load_tensors
from kempnerforge.checkpoint.export._model_part import plan_model_part
from kempnerforge.checkpoint.export._model_records import ModelPart, TensorEntry
from kempnerforge.checkpoint.export._plan import batches
from kempnerforge.checkpoint.store.resolve import leased_checkpoint
from kempnerforge.errors import ConfigError, ExportError

__all__ = [
    "CHUNK_NUMEL",
    "DEFAULT_INSPECT_BATCH_BYTES",
    "ByteProgress",
    "Source",
    "finite_or_none",
    "float64_chunks",
    "group_name",
    "load_batch",
    "open_source",
    "plan_batches",
    "source_of",
    "stored_dtypes",
]

DEFAULT_INSPECT_BATCH_BYTES = 64 * 2**20
"""Stored bytes loaded per ``dcp.load`` call by stats, diff and trace (each side, for diff and
trace). Smaller than export's batch: trace and diff hold two batches at once."""
CHUNK_NUMEL = 2**20
"""Elements converted to float64 at a time (8 MiB)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Source:
    """One checkpoint to read: its model part and the tensors selected from it, in order."""

    part: ModelPart
    entries: tuple[TensorEntry, ...]

    @property
    def step_dir(self) -> Path:
        return self.part.step_dir

    @property
    def step(self) -> int | None:
        """The step recorded in (or named by) the checkpoint; None for an unnamed one."""
        return self.part.step

    @property
    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries)


@contextlib.contextmanager
def open_source(
    src: str | Path,
    step: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Iterator[tuple[Source, tuple[str, ...]]]:
    """Resolve ``src`` (a checkpoint directory, or a root with ``step``) and plan its reading.

    Yields the source and the notes (skipped entries) to show the user, holding a read lease
    on the checkpoint for the ``with`` block, so that a gc does not delete it meanwhile.

    Raises:
        CheckpointRootError, CheckpointNotFoundError: ``src``/``step`` name no checkpoint.
        CorruptCheckpointError: the checkpoint is incomplete or its metadata is unreadable.
        ExportError: the selection (the model part, or the patterns) leaves no tensor.
    """
    with leased_checkpoint(src, step) as step_dir:
        yield source_of(step_dir, include, exclude)


def source_of(
    step_dir: Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[Source, tuple[str, ...]]:
    """The model part of the checkpoint in ``step_dir``, as export selects it.

    The selection is export's (:func:`plan_model_part`: the ``model`` group, else everything
    outside the known non-model groups; ``include`` patterns instead of that rule, ``exclude``
    patterns removed). Complex tensors are left out with a note: their norms and means are not
    what these statistics describe.

    Raises:
        CorruptCheckpointError: a ``.metadata`` file cannot be read.
        ExportError: the selection leaves no tensor.
    """
    part = plan_model_part(step_dir, include=include, exclude=exclude)
    entries = tuple(e for e in part.tensors if not e.dtype.is_complex)
    notes = list(part.notes)
    notes += [
        f"skipped complex tensor {e.name!r} (step {part.step})"
        for e in part.tensors
        if e.dtype.is_complex
    ]
    if not entries:
        raise ExportError(f"{part.step_dir} holds only complex model tensors; nothing to describe")
    return Source(part=part, entries=entries), tuple(notes)


def stored_dtypes(entries: Sequence[TensorEntry]) -> dict[str, torch.dtype]:
    """Load every tensor in the dtype it was saved in (no cast before the float64 statistics)."""
    return {e.name: e.dtype for e in entries}


def plan_batches(entries: Sequence[TensorEntry], batch_bytes: int) -> list[list[TensorEntry]]:
    """Consecutive runs of ``entries`` of at most ``batch_bytes`` stored bytes (at least one).

    Raises:
        ConfigError: ``batch_bytes`` is not positive.
    """
    if batch_bytes <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_bytes}")
    return list(batches(entries, stored_dtypes(entries), batch_bytes))


def load_batch(part: ModelPart, batch: Sequence[TensorEntry]) -> dict[str, torch.Tensor]:
    """Load ``batch`` of ``part`` in its stored dtypes (see :func:`load_tensors`).

    Raises:
        ExportError: a shard is missing, truncated or corrupt.
    """
    return load_tensors(part, batch, stored_dtypes(batch))


def float64_chunks(
    tensor: torch.Tensor, buffer: torch.Tensor | None = None
) -> Iterator[torch.Tensor]:
    """The elements of ``tensor`` as float64 slices of at most :data:`CHUNK_NUMEL` elements.

    Each slice is copied into ``buffer`` (reused: valid until the next slice is produced).
    """
    flat = tensor.reshape(-1)
    if buffer is None:
        buffer = torch.empty(min(CHUNK_NUMEL, max(flat.numel(), 1)), dtype=torch.float64)
    for start in range(0, flat.numel(), CHUNK_NUMEL):
        piece = flat[start : start + CHUNK_NUMEL]
        out = buffer[: piece.numel()]
        out.copy_(piece)
        yield out


def group_name(name: str, depth: int | None) -> str:
    """The group of a dotted tensor name: its first ``depth`` components (all when None)."""
    if depth is None:
        return name
    return ".".join(name.split(".")[:depth])


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if value is not None and math.isfinite(value) else None


class ByteProgress:
    """Sums the stored bytes read so far and reports ``progress(done, total)``."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress

    def add(self, size_bytes: int) -> None:
        self.done += size_bytes
        if self._progress is not None:
            self._progress(self.done, self.total)
