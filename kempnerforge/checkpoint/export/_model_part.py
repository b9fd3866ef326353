"""The model part of a DCP checkpoint: which tensors are the model, by a documented rule.

Our manager and upstream KempnerForge write ``dcp.save({"model": model_sd, "optimizer":
optim_sd})``. DCP flattens that nested dict into keys like ``model.layers.0.weight`` and records
the original path of every key in ``Metadata.planner_data`` (``("model", "layers.0.weight")``).
The ``model`` group is recognised by that path, never by a string prefix: a top-level key named
``"model.extra"`` or ``"model_ema"`` is not part of it. Checkpoints of other DCP users have no
``model`` group (torchtitan puts the model tensors at the top level); for them the model part is
everything outside the known non-model groups (see :func:`plan_model_part`). Only metadata is
read here, through the allowlisted reader of :mod:`._dcp_meta`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

from kempnerforge.checkpoint.export._dcp_meta import read_dcp_metadata
from kempnerforge.checkpoint.export._model_records import (
    GroupSummary,
    ModelPart,
    SelectionRule,
    TensorEntry,
)
from kempnerforge.checkpoint.store.layout import guess_step, pp_stage_dirs
from kempnerforge.checkpoint.store.recorded import read_metadata_json
from kempnerforge.errors import ExportError

__all__ = ["MODEL_KEY", "NON_MODEL_GROUPS", "plan_model_part"]

MODEL_KEY = "model"
NON_MODEL_GROUPS = (
    "optimizer",
    "optim",
    "lr_scheduler",
    "scheduler",
    "dataloader",
    "train_state",
    "rng",
    "extra",
)
"""Top-level groups that are never the model when a checkpoint has no ``model`` group."""
_OPTIMIZER_GROUPS = ("optimizer", "optim")


def _state_dict_path(metadata: Metadata, fqn: str) -> tuple[Any, ...]:
    # planner_data maps each flattened key to its path in the nested dict that was saved. A key
    # without a mapping was a top-level key of a flat state dict: its path is the key itself.
    mapping = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    path = mapping.get(fqn)
    return tuple(path) if isinstance(path, tuple | list) and path else (fqn,)


def _size_bytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel * dtype.itemsize


def _group_of(path: tuple[Any, ...]) -> str:
    """The top-level group of a state-dict path.

    A nested entry belongs to its top-level key (``("model", "layers.0.weight")`` to
    ``model``); a flat top-level key (torchtitan's model tensors, ``dcp.save(model.state_dict())``)
    to its first dotted component (``layers.0.weight`` to ``layers``).
    """
    return str(path[0]) if len(path) > 1 else str(path[0]).split(".", 1)[0]


@dataclass(frozen=True)
class _Candidate:
    path: tuple[Any, ...]
    fqn: str
    item: TensorStorageMetadata | BytesStorageMetadata
    dcp_dir: Path
    stage: int | None

    @property
    def dotted(self) -> str:
        return ".".join(str(part) for part in self.path)

    @property
    def name(self) -> str:
        in_model = len(self.path) > 1 and self.path[0] == MODEL_KEY
        return ".".join(str(part) for part in (self.path[1:] if in_model else self.path))

    def matches(self, patterns: Sequence[str]) -> bool:
        # Against the full dotted name (``model.layers.0.weight``) and the output name
        # (``layers.0.weight``), so that a pattern may be written either way.
        return any(fnmatchcase(self.dotted, p) or fnmatchcase(self.name, p) for p in patterns)


def plan_model_part(
    step_dir: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ModelPart:
    """Describe the model part of the (complete) checkpoint in ``step_dir`` from metadata alone.

    The model part is chosen by one rule, the first that applies:

    1. ``include`` patterns given: every tensor whose dotted name matches one of them;
    2. the state dict has a ``model`` group (our manager, upstream KempnerForge): that group;
    3. otherwise every tensor outside :data:`NON_MODEL_GROUPS` (torchtitan, whose model tensors
       sit at the top level beside ``optimizer`` and ``lr_scheduler``, or a plain
       ``dcp.save(model.state_dict())``).

    Then tensors matching an ``exclude`` pattern are removed. Patterns are shell globs
    (:func:`fnmatch.fnmatchcase`: ``*`` also matches dots), matched against the full dotted name
    (``model.layers.0.weight``) and the output name (``layers.0.weight``). Output names are the
    dotted path less a leading ``model`` group.

    Raises:
        CorruptCheckpointError: a ``.metadata`` file cannot be read.
        ExportError: the selection leaves no tensor (the message lists the groups found).
    """
    stages: list[tuple[int | None, Path]] = list(pp_stage_dirs(step_dir)) or [(None, step_dir)]
    all_metadata: dict[Path, Metadata] = {}
    candidates: list[_Candidate] = []
    for stage, dcp_dir in stages:
        metadata = all_metadata[dcp_dir] = read_dcp_metadata(dcp_dir)
        for fqn, item in metadata.state_dict_metadata.items():
            path = _state_dict_path(metadata, fqn)
            candidates.append(_Candidate(path, fqn, item, dcp_dir, stage))
    rule, chosen = _select(candidates, include)
    excluded = [c for c in chosen if exclude and c.matches(exclude)]
    chosen = [c for c in chosen if not (exclude and c.matches(exclude))]
    tensors, notes = _entries(chosen)
    groups = _group_summaries(candidates)
    if not tensors:
        raise ExportError(_empty_selection(step_dir, rule, include, exclude, groups))
    selected = {(e.dcp_dir, e.fqn) for e in tensors}
    optimizer_tensors = optimizer_bytes = other_bytes = 0
    for c in candidates:
        if not isinstance(c.item, TensorStorageMetadata) or (c.dcp_dir, c.fqn) in selected:
            continue
        size = _size_bytes(c.item.size, c.item.properties.dtype)
        if _group_of(c.path) in _OPTIMIZER_GROUPS:
            optimizer_tensors += 1
            optimizer_bytes += size
        else:
            other_bytes += size
    data = read_metadata_json(step_dir).data or {}
    recorded_step, tokens_seen = data.get("step"), data.get("tokens_seen")
    return ModelPart(
        step_dir=step_dir,
        step=recorded_step if type(recorded_step) is int else guess_step(step_dir.name),
        tokens_seen=tokens_seen if type(tokens_seen) is int else None,
        tensors=tuple(tensors),
        rule=rule,
        excluded_by_pattern=len(excluded),
        groups=groups,
        optimizer_tensors=optimizer_tensors,
        optimizer_size_bytes=optimizer_bytes,
        other_size_bytes=other_bytes,
        notes=tuple(notes),
        metadata=all_metadata,
    )


def _select(
    candidates: list[_Candidate], include: Sequence[str]
) -> tuple[SelectionRule, list[_Candidate]]:
    if include:
        return SelectionRule.include_patterns, [c for c in candidates if c.matches(include)]
    in_model = [c for c in candidates if len(c.path) > 1 and c.path[0] == MODEL_KEY]
    if in_model:
        return SelectionRule.model_group, in_model
    outside = [c for c in candidates if _group_of(c.path) not in NON_MODEL_GROUPS]
    return SelectionRule.outside_non_model_groups, outside


def _entries(chosen: list[_Candidate]) -> tuple[list[TensorEntry], list[str]]:
    tensors: dict[str, TensorEntry] = {}
    notes: list[str] = []
    for c in chosen:
        where = f" (pp{c.stage})" if c.stage is not None else ""
        name = c.name
        if isinstance(c.item, BytesStorageMetadata) or not name:
            if len(c.path) > 1 and c.path[0] == MODEL_KEY:
                notes.append(f"skipped non-tensor model entry {c.fqn!r}{where}")
            continue
        if name in tensors:
            kept = tensors[name]
            notes.append(
                f"{name!r} is saved twice ({kept.fqn} in {kept.dcp_dir} and {c.fqn}"
                f"{where}); exported the first"
            )
            continue
        shape = tuple(int(d) for d in c.item.size)
        dtype = c.item.properties.dtype
        tensors[name] = TensorEntry(
            name=name,
            fqn=c.fqn,
            dcp_dir=c.dcp_dir,
            stage=c.stage,
            shape=shape,
            dtype=dtype,
            size_bytes=_size_bytes(shape, dtype),
        )
    return list(tensors.values()), notes


def _group_summaries(candidates: list[_Candidate]) -> tuple[GroupSummary, ...]:
    counts: dict[str, list[int]] = {}
    for c in candidates:
        entry = counts.setdefault(_group_of(c.path), [0, 0])  # also groups of bytes only
        if isinstance(c.item, TensorStorageMetadata):
            entry[0] += 1
            entry[1] += _size_bytes(c.item.size, c.item.properties.dtype)
    return tuple(GroupSummary(name=n, tensors=t, size_bytes=b) for n, (t, b) in counts.items())


def _empty_selection(
    step_dir: Path,
    rule: SelectionRule,
    include: Sequence[str],
    exclude: Sequence[str],
    groups: tuple[GroupSummary, ...],
) -> str:
    found = ", ".join(f"{g.name} ({g.tensors} tensors)" for g in groups[:12])
    if len(groups) > 12:
        found += f", ... ({len(groups)} groups)"
    how = rule.describe()
    if include:
        how += f" ({', '.join(include)})"
    if exclude:
        how += f" less the exclude patterns ({', '.join(exclude)})"
    return (
        f"no model tensors selected in {step_dir} by {how}; top-level groups found: "
        f"{found or 'none (no tensors at all)'}; select the model with include patterns on "
        f"these dotted names"
    )
