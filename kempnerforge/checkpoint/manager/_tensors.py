"""The tensors of a save: model and optimizer state dicts, written with DCP (read: ``_load``)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
)

from kempnerforge.checkpoint.manager._groups import CheckpointGroups

__all__ = ["frozen_names", "model_state", "save_tensors"]


def model_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, excluded: Collection[str] = ()
) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}`` as DCP saves them (moments keyed by parameter name)."""
    state: dict[str, Any] = {}
    if "model" not in excluded:
        state["model"] = get_model_state_dict(model)
    if optimizer is not None and "optimizer" not in excluded:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def frozen_names(model: torch.nn.Module) -> list[str]:
    """The parameters that do not train, sorted (recorded in train_state, checked on load)."""
    return sorted(name for name, p in model.named_parameters() if not p.requires_grad)


def save_tensors(state: dict[str, Any], tree: Path, groups: CheckpointGroups) -> None:
    """Write ``state`` to the DCP tree ``tree`` on every rank of the DCP group (blocking)."""
    with groups.quiet_single_process():
        dcp.save(state, checkpoint_id=str(tree), process_group=groups.dcp_group)
