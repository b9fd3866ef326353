"""The load side of the manager: what to skip, and reading the tensors of any DCP checkpoint.

``checkpoint.exclude_from_loading`` (or ``load(exclude_keys=...)``) entries are whole parts
(:data:`LOADABLE_KEYS`) or, as upstream KempnerForge documents, FQN prefixes of model parameters
and buffers (``output``, ``layers.31.mlp``): those tensors keep their current values and their
optimizer state is not loaded either, for example to fine-tune with a re-initialised head. A
prefix matches on dotted-name boundaries; an entry that matches nothing is an error.

The tensors are read from our (and upstream's) layout -- ``{"model": ..., "optimizer": ...}`` --
or, for a checkpoint written by another tool without a ``model`` group (torchtitan, a plain
``dcp.save(model.state_dict())``), the model's tensors from the top level of the state dict.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from kempnerforge.checkpoint.export._dcp_meta import (
    SafeFileSystemReader,
    load_error,
    read_dcp_metadata,
)
from kempnerforge.checkpoint.export._model_part import MODEL_KEY
from kempnerforge.errors import ConfigError

__all__ = ["LOADABLE_KEYS", "Exclusions", "load_dcp_state", "plan_exclusions"]

logger = logging.getLogger(__name__)

LOADABLE_KEYS = ("model", "optimizer", "scheduler", "dataloader", "rng")
"""The parts of a checkpoint a resume can skip as a whole."""


@dataclass(frozen=True, kw_only=True)
class Exclusions:
    """What a load skips: whole parts, and model tensors by FQN."""

    parts: frozenset[str]
    fqns: frozenset[str]
    """Model parameters and buffers that keep their current values (and optimizer state)."""


def _matches(fqn: str, prefix: str) -> bool:
    return fqn == prefix or fqn.startswith(prefix + ".")


def plan_exclusions(entries: Iterable[str], model_fqns: Collection[str]) -> Exclusions:
    """Split ``entries`` into whole parts and the model FQNs their prefixes match.

    Raises:
        ConfigError: an entry that is neither a part nor a prefix of any model FQN (a typo must
            not silently load everything).
    """
    parts: set[str] = set()
    fqns: set[str] = set()
    for entry in entries:
        if entry in LOADABLE_KEYS:
            parts.add(entry)
            continue
        matched = {fqn for fqn in model_fqns if _matches(fqn, entry.strip("."))} if entry else set()
        if not matched:
            tops = sorted({fqn.split(".", 1)[0] for fqn in model_fqns})
            raise ConfigError(
                f"cannot exclude {entry!r} from loading: it is neither a part "
                f"({', '.join(LOADABLE_KEYS)}) nor the FQN prefix of a model parameter or "
                f"buffer (prefixes match whole dotted names; the model's top-level names: "
                f"{', '.join(tops[:20])}{', ...' if len(tops) > 20 else ''})"
            )
        fqns |= matched
    return Exclusions(parts=frozenset(parts), fqns=frozenset(fqns))


def _has_model_group(metadata: Metadata) -> bool:
    mapping = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    for path in mapping.values():
        if isinstance(path, tuple | list) and len(path) > 1 and path[0] == MODEL_KEY:
            return True
    return False


def load_dcp_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    tree: Path,
    exclusions: Exclusions,
    *,
    partial: bool,
    process_group: dist.ProcessGroup | None,
) -> None:
    """Load model and optimizer tensors from the DCP tree ``tree`` in place, on every rank.

    Excluded parts and FQNs are neither read nor changed. A checkpoint without a ``model``
    group (written by another tool) gives the model only; its optimizer state, in a layout of
    its own, is not loaded (a warning says so).

    The ``.metadata`` is read once, through the allowlisted reader, and handed to DCP: DCP never
    unpickles it itself.

    Raises:
        CorruptCheckpointError: the ``.metadata`` cannot be read.
        ConfigError: the checkpoint lacks model tensors the model has (and frozen parameters
            do not explain it); the message names them.
    """
    metadata = read_dcp_metadata(tree)
    ours = _has_model_group(metadata)
    model_sd: dict[str, Any] | None = None
    optim_sd: dict[str, Any] | None = None
    kept: dict[str, Any] = {}
    if "model" not in exclusions.parts:
        model_sd = get_model_state_dict(model)
        for fqn in exclusions.fqns:
            model_sd.pop(fqn, None)
    by_index = ours and _optimizer_keyed_by_index(metadata)
    if optimizer is not None and "optimizer" not in exclusions.parts:
        if ours:
            # Initialises the moments (zeros) so that DCP has tensors to read into.
            optim_sd = get_optimizer_state_dict(model, optimizer)
            if by_index:  # upstream KempnerForge saved optimizer.state_dict(): keyed 0, 1, ...
                optim_sd = optimizer.state_dict()
                names = _names_by_index(model, optimizer)
                excluded: Collection[Any] = {i for i, n in names.items() if n in exclusions.fqns}
            else:
                excluded = exclusions.fqns
            state = cast(dict[Any, Any], optim_sd["state"])  # keyed by parameter FQN or index
            kept = {key: state.pop(key) for key in list(state) if key in excluded}
        else:
            logger.warning(
                "%s has no 'model' group (written by another tool): loading the model weights "
                "only; the optimizer starts fresh",
                tree,
            )
    if model_sd is None and optim_sd is None:
        return
    request: dict[str, Any] = {}
    if ours:
        if model_sd is not None:
            request["model"] = model_sd
        if optim_sd is not None:
            request["optimizer"] = optim_sd
    elif model_sd is not None:
        request = model_sd
    if not partial and model_sd is not None:
        _check_model_keys(tree, metadata, model_sd, ours)
    try:
        dcp.load(
            request,
            storage_reader=SafeFileSystemReader(tree, metadata),
            process_group=process_group,
            planner=DefaultLoadPlanner(allow_partial_load=partial),
        )
    except CheckpointException as exc:  # a BaseException: a missing or short shard, one line
        raise load_error(exc, tree) from exc
    if model_sd is not None:
        strict = not exclusions.fqns and not partial
        set_model_state_dict(model, model_sd, options=StateDictOptions(strict=strict))
    if optim_sd is not None and optimizer is not None:
        cast(dict[Any, Any], optim_sd["state"]).update(kept)
        if by_index:
            optimizer.load_state_dict(optim_sd)
        else:
            set_optimizer_state_dict(model, optimizer, optim_sd)


def _optimizer_keyed_by_index(metadata: Metadata) -> bool:
    """Whether the optimizer state was saved as ``optimizer.state_dict()`` (upstream's manager):
    keyed by parameter index rather than by FQN."""
    mapping = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    for path in mapping.values():
        if (
            isinstance(path, tuple | list)
            and len(path) > 2
            and tuple(path[:2]) == ("optimizer", "state")
            and str(path[2]).isdigit()  # DCP records the index as a string
        ):
            return True
    return False


def _names_by_index(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Parameter FQN of each index of ``optimizer.state_dict()`` (params in group order)."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: names.get(id(p), "") for i, p in enumerate(params)}


def _check_model_keys(tree: Path, metadata: Metadata, model_sd: dict[str, Any], ours: bool) -> None:
    saved = set(metadata.state_dict_metadata)
    prefix = f"{MODEL_KEY}." if ours else ""
    missing = sorted(fqn for fqn in model_sd if f"{prefix}{fqn}" not in saved)
    if missing:
        raise ConfigError(
            f"{tree} has no saved value for {len(missing)} model tensor(s) "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); if the model "
            f"changed on purpose, list their FQN prefixes in checkpoint.exclude_from_loading"
        )
