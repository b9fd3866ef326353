"""Checkpoint store: on-disk layout, scan, retention, manager and export.

Importing this package does not import torch; every name below is imported on first use.

Example:
    >>> from kempnerforge.checkpoint import plan_retention, scan  # no torch import
    >>> from kempnerforge.checkpoint import CheckpointManager  # imports torch now
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # real types for type checkers and IDEs; at run time, __getattr__
    from kempnerforge.checkpoint.export.contents import inspect_checkpoint
    from kempnerforge.checkpoint.export.exporter import (
        ExportResult,
        export_safetensors,
        verify_export,
    )
    from kempnerforge.checkpoint.manager import CheckpointManager
    from kempnerforge.checkpoint.manager.async_save import AsyncCheckpointer
    from kempnerforge.checkpoint.store.apply import ApplyResult, apply_plan
    from kempnerforge.checkpoint.store.catalog import scan
    from kempnerforge.checkpoint.store.collect import GcResult, collect_garbage
    from kempnerforge.checkpoint.store.decisions import Action, Decision, Reason, RetentionPlan
    from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo, SkippedEntry
    from kempnerforge.checkpoint.store.retention import plan_retention
    from kempnerforge.checkpoint.store.simulate import RunSimulation, simulate_run

# name -> module; imported on first use, so that `kf-ckpt ls` pays only for what it uses and
# nothing here imports torch until a manager or export name is asked for.
_LAZY = {
    "Catalog": "kempnerforge.checkpoint.store.records",
    "CheckpointInfo": "kempnerforge.checkpoint.store.records",
    "SkippedEntry": "kempnerforge.checkpoint.store.records",
    "scan": "kempnerforge.checkpoint.store.catalog",
    "Action": "kempnerforge.checkpoint.store.decisions",
    "Decision": "kempnerforge.checkpoint.store.decisions",
    "Reason": "kempnerforge.checkpoint.store.decisions",
    "RetentionPlan": "kempnerforge.checkpoint.store.decisions",
    "plan_retention": "kempnerforge.checkpoint.store.retention",
    "ApplyResult": "kempnerforge.checkpoint.store.apply",
    "GcResult": "kempnerforge.checkpoint.store.collect",
    "apply_plan": "kempnerforge.checkpoint.store.apply",
    "collect_garbage": "kempnerforge.checkpoint.store.collect",
    "RunSimulation": "kempnerforge.checkpoint.store.simulate",
    "simulate_run": "kempnerforge.checkpoint.store.simulate",
    "CheckpointManager": "kempnerforge.checkpoint.manager",
    "AsyncCheckpointer": "kempnerforge.checkpoint.manager.async_save",
    "ExportResult": "kempnerforge.checkpoint.export.exporter",
    "export_safetensors": "kempnerforge.checkpoint.export.exporter",
    "verify_export": "kempnerforge.checkpoint.export.exporter",
    "inspect_checkpoint": "kempnerforge.checkpoint.export.contents",
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
