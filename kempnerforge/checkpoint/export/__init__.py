"""Reading checkpoints for people and other tools: export to safetensors, and inspection.

Owns the allowlisted reading of DCP ``.metadata``, the choice of a checkpoint's model part,
bounded batched reads with ``dcp.load`` into preallocated tensors, the streaming safetensors
writer and its verification, and ``show``'s table of contents.

May import: torch, safetensors, :mod:`kempnerforge.checkpoint.store`, :mod:`kempnerforge.config`,
:mod:`kempnerforge.errors`. Never the manager or the CLI.
"""

from kempnerforge.checkpoint.export.contents import (
    CheckpointContents,
    TensorInfo,
    inspect_checkpoint,
)
from kempnerforge.checkpoint.export.exporter import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_MAX_SHARD_SIZE,
    ExportResult,
    ProgressCallback,
    export_safetensors,
    verify_export,
)

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_MAX_SHARD_SIZE",
    "CheckpointContents",
    "ExportResult",
    "ProgressCallback",
    "TensorInfo",
    "export_safetensors",
    "inspect_checkpoint",
    "verify_export",
]
