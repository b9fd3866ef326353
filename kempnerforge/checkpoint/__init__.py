"""Checkpoint store: on-disk layout, scan, retention, manager and export.

Importing this package does not import torch; every name below is imported on first use.

Example:
    >>> from kempnerforge.checkpoint import plan_retention, scan  # no torch import
    >>> from kempnerforge.checkpoint import CheckpointManager  # imports torch now
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module; imported on first use, so that `kf-ckpt ls` pays only for what it uses and
# nothing here imports torch until a manager or export name is asked for.
_LAZY = {
    "Catalog": "kempnerforge.checkpoint.catalog",
    "CheckpointInfo": "kempnerforge.checkpoint.catalog",
    "SkippedEntry": "kempnerforge.checkpoint.catalog",
    "scan": "kempnerforge.checkpoint.catalog",
    "Action": "kempnerforge.checkpoint.retention",
    "Decision": "kempnerforge.checkpoint.retention",
    "Reason": "kempnerforge.checkpoint.retention",
    "RetentionPlan": "kempnerforge.checkpoint.retention",
    "plan_retention": "kempnerforge.checkpoint.retention",
    "ApplyResult": "kempnerforge.checkpoint.gc",
    "GcResult": "kempnerforge.checkpoint.gc",
    "apply_plan": "kempnerforge.checkpoint.gc",
    "collect_garbage": "kempnerforge.checkpoint.gc",
    "RunSimulation": "kempnerforge.checkpoint.simulate",
    "simulate_run": "kempnerforge.checkpoint.simulate",
    "CheckpointManager": "kempnerforge.checkpoint.manager",
    "AsyncCheckpointer": "kempnerforge.checkpoint.async_save",
    "ExportResult": "kempnerforge.checkpoint.export",
    "export_safetensors": "kempnerforge.checkpoint.export",
    "verify_export": "kempnerforge.checkpoint.export",
    "inspect_checkpoint": "kempnerforge.checkpoint.inspect",
}

__all__ = [
    "Action",
    "ApplyResult",
    "AsyncCheckpointer",
    "Catalog",
    "CheckpointInfo",
    "CheckpointManager",
    "Decision",
    "ExportResult",
    "GcResult",
    "Reason",
    "RetentionPlan",
    "RunSimulation",
    "SkippedEntry",
    "apply_plan",
    "collect_garbage",
    "export_safetensors",
    "inspect_checkpoint",
    "plan_retention",
    "scan",
    "simulate_run",
    "verify_export",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
