"""Reading checkpoints for people and other tools: export to safetensors, and inspection.

Owns the allowlisted reading of DCP ``.metadata``, the choice of a checkpoint's model part,
bounded batched reads with ``dcp.load`` into preallocated tensors, the streaming safetensors
writer and its verification, ``show``'s table of contents, and the inspection of training
dynamics: ``stats`` of one checkpoint, ``diff`` of two, ``trace`` across a run (with an optional
figure; matplotlib is imported only when one is drawn).

May import: torch, safetensors, :mod:`kempnerforge.checkpoint.store`, :mod:`kempnerforge.config`,
:mod:`kempnerforge.errors`. Never the manager or the CLI.
"""

from kempnerforge.checkpoint.export.contents import (
    CheckpointContents,
    TensorInfo,
    inspect_checkpoint,
)
from kempnerforge.checkpoint.export.diff import DiffResult, DiffRow, ShapeMismatch, diff_checkpoints
from kempnerforge.checkpoint.export.exporter import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_MAX_SHARD_SIZE,
    ExportResult,
    ProgressCallback,
    export_safetensors,
    verify_export,
)
from kempnerforge.checkpoint.export.stats import (
    CheckpointStats,
    StatsTotal,
    TensorStats,
    checkpoint_stats,
)
from kempnerforge.checkpoint.export.trace_plot import plot_trace
from kempnerforge.checkpoint.export.weight_trace import TraceResult, TraceRow, trace_checkpoints

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_MAX_SHARD_SIZE",
    "CheckpointContents",
    "CheckpointStats",
    "DiffResult",
    "DiffRow",
    "ExportResult",
    "ProgressCallback",
    "ShapeMismatch",
    "StatsTotal",
    "TensorInfo",
    "TensorStats",
    "TraceResult",
    "TraceRow",
    "checkpoint_stats",
    "diff_checkpoints",
    "export_safetensors",
    "inspect_checkpoint",
    "plot_trace",
    "trace_checkpoints",
    "verify_export",
]
