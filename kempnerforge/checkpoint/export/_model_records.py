"""What the model part of a checkpoint is made of: its tensors, groups and selection rule.

The records :func:`~kempnerforge.checkpoint.export._model_part.plan_model_part` returns
(:class:`ModelPart`, with a :class:`TensorEntry` per model tensor and a :class:`GroupSummary` per
top-level group of the state dict) and the :class:`SelectionRule` that chose the tensors. Export,
``show``, ``stats``, ``diff`` and ``trace`` read them; all come from DCP metadata alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import Metadata

__all__ = ["GroupSummary", "ModelPart", "SelectionRule", "TensorEntry"]


class SelectionRule(StrEnum):
    """Which rule chose the model part of a checkpoint (see
    :func:`~kempnerforge.checkpoint.export._model_part.plan_model_part`)."""

    model_group = "model_group"
    """The ``model`` group of the saved state dict: our manager and upstream KempnerForge."""
    outside_non_model_groups = "outside_non_model_groups"
    """No ``model`` group: every tensor outside the non-model groups
    (:data:`~kempnerforge.checkpoint.export._model_part.NON_MODEL_GROUPS`: torchtitan, plain
    ``dcp.save(model.state_dict())``)."""
    include_patterns = "include_patterns"
    """The caller's include patterns, for layouts the two rules above do not know."""

    def describe(self) -> str:
        """The rule in words, for people."""
        return {
            SelectionRule.model_group: "the 'model' group",
            SelectionRule.outside_non_model_groups: (
                "every tensor outside the non-model groups (no 'model' group)"
            ),
            SelectionRule.include_patterns: "the include patterns",
        }[self]


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """One model tensor as the DCP metadata describes it (nothing of its data is read)."""

    name: str
    """Output name: the dotted state-dict path, less a leading ``model`` group
    (``layers.0.weight``)."""
    fqn: str
    """The flattened DCP key, e.g. ``model.layers.0.weight``."""
    dcp_dir: Path
    """The DCP tree that holds it: the step dir, or its ``pp<k>/`` stage dir."""
    stage: int | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class GroupSummary:
    """One top-level group of a checkpoint's state dict: its name, tensor count and bytes.

    Groups of non-tensor entries only (a pickled scheduler state) count zero tensors."""

    name: str
    tensors: int
    size_bytes: int


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelPart:
    """The model tensors of a checkpoint (all pp stages merged) and the sizes of the rest."""

    step_dir: Path
    step: int | None
    """From ``metadata.json``, else the directory name (``step_<N>``, ``step-<N>``); None when
    neither says (a checkpoint written under another name by another tool)."""
    tokens_seen: int | None
    """From ``metadata.json``, when it records one."""
    tensors: tuple[TensorEntry, ...]
    rule: SelectionRule
    """Which rule chose :attr:`tensors`."""
    excluded_by_pattern: int
    """Tensors the rule chose that the exclude patterns removed."""
    groups: tuple[GroupSummary, ...]
    """Every top-level group of the state dict, in order of first appearance."""
    optimizer_tensors: int
    optimizer_size_bytes: int
    other_size_bytes: int
    """Tensors neither selected nor optimizer state (e.g. an EMA copy)."""
    notes: tuple[str, ...]
    """What was skipped and why (non-tensor model entries, names repeated across stages)."""
    metadata: Mapping[Path, Metadata]
    """The DCP metadata of every DCP tree, keyed by its directory."""
