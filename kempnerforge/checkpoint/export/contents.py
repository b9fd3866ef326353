"""What a checkpoint holds, from its DCP metadata alone (no tensor data is read).

``kf-ckpt show`` renders :func:`inspect_checkpoint`: every model tensor (name, shape, dtype,
bytes) with totals, and the size of the optimizer state next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.export._dcp_meta import plan_model_part
from kempnerforge.checkpoint.store.selection import resolve_checkpoint

__all__ = ["CheckpointContents", "TensorInfo", "inspect_checkpoint"]


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One model tensor as an export would name it (the state-dict path below ``model``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """``float32``, ``bfloat16``, ``int64``, ...: the dtype it was saved in."""
    size_bytes: int
    stage: int | None
    """The pipeline stage ``pp<k>`` that holds it, or None without pipeline parallelism."""


@dataclass(frozen=True, kw_only=True)
class CheckpointContents:
    """The model tensors of one checkpoint and the sizes of the rest of its DCP state."""

    step_dir: Path
    step: int
    tokens_seen: int | None
    tensors: tuple[TensorInfo, ...]
    model_size_bytes: int
    optimizer_tensors: int
    optimizer_size_bytes: int
    other_size_bytes: int
    """Tensors outside ``model`` and ``optimizer`` (an EMA copy, extras)."""
    pp_stages: int | None
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, shapes as lists)."""
        data = asdict(self)
        data["step_dir"] = str(self.step_dir)
        data["tensors"] = [{**t, "shape": list(t["shape"])} for t in data["tensors"]]
        data["notes"] = list(self.notes)
        return data


def inspect_checkpoint(src: str | Path, step: int | None = None) -> CheckpointContents:
    """List the model tensors of a checkpoint and size its optimizer state, from metadata only.

    Args:
        src: a ``step_<N>`` directory, or a checkpoint root (then ``step``, default the newest
            complete checkpoint).
        step: which checkpoint of a root to inspect.

    Raises:
        CheckpointRootError, CheckpointNotFoundError: ``src``/``step`` name no checkpoint.
        CorruptCheckpointError: the checkpoint is incomplete or its metadata is unreadable.

    Example:
        >>> contents = inspect_checkpoint("runs/a", step=1500)  # doctest: +SKIP
        >>> contents.model_size_bytes, contents.optimizer_size_bytes  # doctest: +SKIP
        (14_000_000_000, 28_000_000_000)
    """
    step_dir = resolve_checkpoint(src, step)
    part = plan_model_part(step_dir)
    tensors = tuple(
        TensorInfo(
            name=e.name,
            shape=e.shape,
            dtype=str(e.dtype).removeprefix("torch."),
            size_bytes=e.size_bytes,
            stage=e.stage,
        )
        for e in part.tensors
    )
    stage_dirs = [d for d in part.metadata if d != step_dir]
    return CheckpointContents(
        step_dir=step_dir,
        step=part.step,
        tokens_seen=part.tokens_seen,
        tensors=tensors,
        model_size_bytes=sum(t.size_bytes for t in tensors),
        optimizer_tensors=part.optimizer_tensors,
        optimizer_size_bytes=part.optimizer_size_bytes,
        other_size_bytes=part.other_size_bytes,
        pp_stages=len(stage_dirs) if stage_dirs else None,
        notes=part.notes,
    )
