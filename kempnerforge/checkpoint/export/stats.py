"""Per-tensor statistics of a checkpoint's model part, streamed in bounded batches.

``kf-ckpt stats`` renders :func:`checkpoint_stats`: for every model tensor its L2 norm, mean,
population standard deviation, min, max and largest magnitude, and the counts of NaN, Inf and
exact zeros; then totals over the model. Everything is computed in float64 from the stored values
(bf16 and integers convert exactly, int64 above 2**53 rounds), slice by slice, so memory stays
near one batch of the stored tensors.

The moments (norm, mean, std) and the extremes describe the *finite* values: one NaN must not
hide the scale of the rest; the NaN and Inf counts say how many values were left out. A tensor
with no finite value has null statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kempnerforge.checkpoint.export._stream import (
    CHUNK_NUMEL,
    DEFAULT_INSPECT_BATCH_BYTES,
    ByteProgress,
    finite_or_none,
    float64_chunks,
    load_batch,
    open_source,
    plan_batches,
)

__all__ = ["CheckpointStats", "StatsTotal", "TensorStats", "checkpoint_stats"]

STATS_FORMAT = "kf-ckpt-stats"


@dataclass(frozen=True, kw_only=True)
class TensorStats:
    """The statistics of one model tensor (None: no finite value to describe)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    l2_norm: float | None
    mean: float | None
    std: float | None
    """Population standard deviation (ddof=0)."""
    min: float | None
    max: float | None
    abs_max: float | None
    nan_count: int
    inf_count: int
    zero_count: int


@dataclass(frozen=True, kw_only=True)
class StatsTotal:
    """Totals over the selected tensors; ``l2_norm`` is the norm of all of them as one vector."""

    tensors: int
    numel: int
    l2_norm: float
    nan_count: int
    inf_count: int


@dataclass(frozen=True, kw_only=True)
class CheckpointStats:
    """What :func:`checkpoint_stats` found in one checkpoint."""

    source: Path
    step: int | None
    """The step recorded in (or named by) the checkpoint; None for an unnamed one."""
    tensors: tuple[TensorStats, ...]
    total: StatsTotal
    notes: tuple[str, ...]

    @property
    def nonfinite(self) -> bool:
        """True when any NaN or Inf was found."""
        return self.total.nan_count + self.total.inf_count > 0

    def to_json(self) -> dict[str, Any]:
        """The ``kf-ckpt-stats`` document (format_version 1)."""
        return {
            "format": STATS_FORMAT,
            "format_version": 1,
            "source": str(self.source),
            "step": self.step,
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                    "numel": t.numel,
                    "l2_norm": finite_or_none(t.l2_norm),
                    "mean": finite_or_none(t.mean),
                    "std": finite_or_none(t.std),
                    "min": t.min,
                    "max": t.max,
                    "abs_max": t.abs_max,
                    "nan_count": t.nan_count,
                    "inf_count": t.inf_count,
                    "zero_count": t.zero_count,
                }
                for t in self.tensors
            ],
            "total": {
                "tensors": self.total.tensors,
                "numel": self.total.numel,
                "l2_norm": finite_or_none(self.total.l2_norm),
                "nan_count": self.total.nan_count,
                "inf_count": self.total.inf_count,
            },
        }


def checkpoint_stats(
    src: str | Path,
    step: int | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    batch_bytes: int = DEFAULT_INSPECT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointStats:
    """Compute the statistics of every model tensor of a checkpoint.

    Args:
        src: a checkpoint directory, or a checkpoint root (then ``step``, default the newest
            complete checkpoint).
        step: which checkpoint of a root.
        include: globs on dotted tensor names; only matching tensors are read (all if empty).
        exclude: globs on dotted tensor names; matching tensors are left out.
        batch_bytes: stored bytes loaded at a time; bounds peak memory.
        progress: called with ``(done_bytes, total_bytes)`` after each batch.

    Raises:
        CheckpointRootError, CheckpointNotFoundError: ``src``/``step`` name no checkpoint.
        CorruptCheckpointError: the checkpoint is incomplete or its metadata is unreadable.
        ConfigError: the globs select no tensor, or ``batch_bytes`` is not positive.
        ExportError: a shard is missing or corrupt.

    Example:
        >>> stats = checkpoint_stats("runs/a", step=1500)  # doctest: +SKIP
        >>> stats.total.nan_count, stats.tensors[0].l2_norm  # doctest: +SKIP
        (0, 11.31)
    """
    with open_source(src, step, include, exclude) as (source, notes):
        plan = plan_batches(source.entries, batch_bytes)
        bar = ByteProgress(source.size_bytes, progress)
        results: list[TensorStats] = []
        buffer = torch.empty(0, dtype=torch.float64)
        for batch in plan:
            loaded = load_batch(source.part, batch)
            for entry in batch:
                tensor = loaded.pop(entry.name)
                if buffer.numel() < min(tensor.numel(), CHUNK_NUMEL):
                    buffer = torch.empty(min(tensor.numel(), CHUNK_NUMEL), dtype=torch.float64)
                results.append(tensor_stats(entry.name, tensor, buffer))
                del tensor
            bar.add(sum(e.size_bytes for e in batch))
        sumsq = sum((t.l2_norm or 0.0) ** 2 for t in results)
        total = StatsTotal(
            tensors=len(results),
            numel=sum(t.numel for t in results),
            l2_norm=math.sqrt(sumsq),
            nan_count=sum(t.nan_count for t in results),
            inf_count=sum(t.inf_count for t in results),
        )
        return CheckpointStats(
            source=source.step_dir,
            step=source.step,
            tensors=tuple(results),
            total=total,
            notes=notes,
        )


def tensor_stats(
    name: str, tensor: torch.Tensor, buffer: torch.Tensor | None = None
) -> TensorStats:
    """The statistics of one loaded tensor, in float64 slices (see the module docstring)."""
    floating = tensor.is_floating_point()
    count = 0  # finite values seen
    mean = m2 = sumsq = 0.0
    low, high = math.inf, -math.inf
    nan = inf = zeros = 0
    for chunk in float64_chunks(tensor, buffer):
        zeros += int(torch.count_nonzero(chunk == 0))
        values = chunk
        if floating:
            finite = torch.isfinite(chunk)
            n_finite = int(finite.sum())
            if n_finite < chunk.numel():
                chunk_nan = int(torch.isnan(chunk).sum())
                nan += chunk_nan
                inf += chunk.numel() - n_finite - chunk_nan
                values = chunk[finite]
        n = values.numel()
        if n == 0:
            continue
        # Chan et al.'s pairwise update: exact per-slice moments (two passes), merged in float64.
        chunk_mean = float(values.mean())
        centered = values - chunk_mean
        chunk_m2 = float(torch.dot(centered, centered))
        sumsq += float(torch.dot(values, values))
        lo, hi = torch.aminmax(values)
        low, high = min(low, float(lo)), max(high, float(hi))
        delta = chunk_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += chunk_m2 + delta * delta * count * n / total
        count = total
    some = count > 0
    return TensorStats(
        name=name,
        shape=tuple(tensor.shape),
        dtype=str(tensor.dtype).removeprefix("torch."),
        numel=tensor.numel(),
        l2_norm=math.sqrt(sumsq) if some else None,
        mean=mean if some else None,
        std=math.sqrt(m2 / count) if some else None,
        min=low if some else None,
        max=high if some else None,
        abs_max=max(abs(low), abs(high)) if some else None,
        nan_count=nan,
        inf_count=inf,
        zero_count=zeros,
    )
