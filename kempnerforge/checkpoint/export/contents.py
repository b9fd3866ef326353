"""What a checkpoint holds, from its DCP metadata alone (no tensor data is read).

``kf-ckpt show`` renders :func:`inspect_checkpoint`: every model tensor (name, shape, dtype,
bytes) with totals, the rule that chose them, the top-level groups of the state dict, and the
size of the optimizer state next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.export._model_part import plan_model_part
from kempnerforge.checkpoint.export._model_records import GroupSummary, SelectionRule
from kempnerforge.checkpoint.store.resolve import leased_checkpoint

__all__ = [
    "CheckpointContents",
    "GroupSummary",
    "SelectionRule",
    "TensorInfo",
    "inspect_checkpoint",
]


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
    step: int | None
    """From ``metadata.json``, else the directory name; None when neither records one."""
    tokens_seen: int | None
    tensors: tuple[TensorInfo, ...]
    rule: SelectionRule
    """Which rule chose the model tensors: the ``model`` group, everything outside the known
    non-model groups, or the include patterns."""
    excluded_by_pattern: int
    """Tensors the rule chose that the exclude patterns removed."""
    groups: tuple[GroupSummary, ...]
    """The top-level groups of the saved state dict (tensor count and bytes of each)."""
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
        data["rule"] = str(self.rule)
        data["groups"] = [asdict(g) for g in self.groups]
        return data


def inspect_checkpoint(
    src: str | Path,
    step: int | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> CheckpointContents:
    """List the model tensors of a checkpoint and size its optimizer state, from metadata only.

    Args:
        src: a checkpoint directory (any directory holding a DCP ``.metadata``, whoever wrote
            it), or a checkpoint root (then ``step``, default the newest complete checkpoint).
        step: which checkpoint of a root to inspect.
        include: glob patterns on dotted names that replace the model-part rule.
        exclude: glob patterns on dotted names of tensors to leave out.

    Raises:
        CheckpointRootError, CheckpointNotFoundError: ``src``/``step`` name no checkpoint.
        CorruptCheckpointError: the checkpoint is incomplete or its metadata is unreadable.
        ExportError: the selection holds no tensor (the message lists the groups found).

    Example:
        >>> contents = inspect_checkpoint("runs/a", step=1500)  # doctest: +SKIP
        >>> contents.model_size_bytes, contents.optimizer_size_bytes  # doctest: +SKIP
        (14_000_000_000, 28_000_000_000)
    """
    with leased_checkpoint(src, step) as step_dir:
        part = plan_model_part(step_dir, include=include, exclude=exclude)
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
            rule=part.rule,
            excluded_by_pattern=part.excluded_by_pattern,
            groups=part.groups,
            model_size_bytes=sum(t.size_bytes for t in tensors),
            optimizer_tensors=part.optimizer_tensors,
            optimizer_size_bytes=part.optimizer_size_bytes,
            other_size_bytes=part.other_size_bytes,
            pp_stages=len(stage_dirs) if stage_dirs else None,
            notes=part.notes,
        )
