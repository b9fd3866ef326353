"""Read a checkpoint's DCP metadata, pick out the model part, and load it in bounded batches.

A checkpoint is ``dcp.save({"model": model_sd, "optimizer": optim_sd})``. DCP flattens that
nested dict into keys like ``model.layers.0.weight`` and records the original path of every key
in ``Metadata.planner_data`` (``("model", "layers.0.weight")``). The model part is selected by
that path (first component ``"model"``), never by a string prefix: a top-level key named
``"model.extra"`` or ``"model_ema"`` is not part of the model.

The ``.metadata`` pickle is read with an allowlist of DCP metadata types, so listing or exporting
a checkpoint from someone else never runs code from it; :func:`load_tensors` hands the already
read metadata to DCP instead of letting it unpickle the file again.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

from kempnerforge.checkpoint.export._dcp_failure import describe_failure
from kempnerforge.checkpoint.store.layout import (
    DCP_METADATA,
    parse_step,
    pp_stage_dirs,
    read_metadata_json,
)
from kempnerforge.errors import CorruptCheckpointError, ExportError

__all__ = [
    "MODEL_KEY",
    "OPTIMIZER_KEY",
    "ModelPart",
    "TensorEntry",
    "load_tensors",
    "plan_model_part",
    "read_dcp_metadata",
]

MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"

_SAFE_MODULE_PREFIX = "torch.distributed.checkpoint."
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP ``.metadata`` only: DCP's own data classes, torch dtypes and sizes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_SAFE_MODULE_PREFIX):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and obj.__module__.startswith(_SAFE_MODULE_PREFIX):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type")


def read_dcp_metadata(dcp_dir: Path) -> Metadata:
    """Read the DCP ``.metadata`` of one DCP tree (a step dir or a ``pp<k>/`` stage dir).

    Raises:
        CorruptCheckpointError: the file is missing, truncated, or not DCP metadata.
    """
    path = dcp_dir / DCP_METADATA
    try:
        with open(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"cannot read DCP metadata {path}: {exc}; the checkpoint is incomplete or corrupt, "
            f"pick another with 'kf-ckpt ls {dcp_dir.parent}'"
        ) from exc
    if not isinstance(metadata, Metadata):
        raise CorruptCheckpointError(f"{path} is not DCP metadata ({type(metadata).__name__})")
    return metadata


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """One model tensor as the DCP metadata describes it (nothing of its data is read)."""

    name: str
    """Output name: the state-dict path below ``model``, e.g. ``layers.0.weight``."""
    fqn: str
    """The flattened DCP key, e.g. ``model.layers.0.weight``."""
    dcp_dir: Path
    """The DCP tree that holds it: the step dir, or its ``pp<k>/`` stage dir."""
    stage: int | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    size_bytes: int


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelPart:
    """The model tensors of a checkpoint (all pp stages merged) and the sizes of the rest."""

    step_dir: Path
    step: int
    tokens_seen: int | None
    """From ``metadata.json``, when it records one."""
    tensors: tuple[TensorEntry, ...]
    optimizer_tensors: int
    optimizer_size_bytes: int
    other_size_bytes: int
    """Tensors outside ``model`` and ``optimizer`` (e.g. an EMA copy)."""
    notes: tuple[str, ...]
    """What was skipped and why (non-tensor model entries, names repeated across stages)."""
    metadata: Mapping[Path, Metadata]
    """The DCP metadata of every DCP tree, keyed by its directory."""


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


def plan_model_part(step_dir: Path) -> ModelPart:
    """Describe the model part of the (complete) checkpoint in ``step_dir`` from metadata alone.

    Raises:
        CorruptCheckpointError: a ``.metadata`` file cannot be read.
    """
    step = parse_step(step_dir.name)
    if step is None:
        raise CorruptCheckpointError(f"{step_dir} is not a step_<N> checkpoint directory")
    stages: list[tuple[int | None, Path]] = list(pp_stage_dirs(step_dir)) or [(None, step_dir)]
    tensors: dict[str, TensorEntry] = {}
    notes: list[str] = []
    all_metadata: dict[Path, Metadata] = {}
    optimizer_tensors = optimizer_bytes = other_bytes = 0
    for stage, dcp_dir in stages:
        metadata = all_metadata[dcp_dir] = read_dcp_metadata(dcp_dir)
        where = f" (pp{stage})" if stage is not None else ""
        for fqn, item in metadata.state_dict_metadata.items():
            path = _state_dict_path(metadata, fqn)
            if path[0] != MODEL_KEY:
                if isinstance(item, TensorStorageMetadata):
                    size = _size_bytes(item.size, item.properties.dtype)
                    if path[0] == OPTIMIZER_KEY:
                        optimizer_tensors += 1
                        optimizer_bytes += size
                    else:
                        other_bytes += size
                continue
            name = ".".join(str(part) for part in path[1:])
            if isinstance(item, BytesStorageMetadata) or not name:
                notes.append(f"skipped non-tensor model entry {fqn!r}{where}")
                continue
            if name in tensors:
                kept = tensors[name]
                notes.append(
                    f"{name!r} is saved twice ({kept.fqn} in {kept.dcp_dir} and {fqn}"
                    f"{where}); exported the first"
                )
                continue
            shape = tuple(int(d) for d in item.size)
            dtype = item.properties.dtype
            tensors[name] = TensorEntry(
                name=name,
                fqn=fqn,
                dcp_dir=dcp_dir,
                stage=stage,
                shape=shape,
                dtype=dtype,
                size_bytes=_size_bytes(shape, dtype),
            )
    tokens_seen = (read_metadata_json(step_dir).data or {}).get("tokens_seen")
    return ModelPart(
        step_dir=step_dir,
        step=step,
        tokens_seen=tokens_seen if type(tokens_seen) is int else None,
        tensors=tuple(tensors.values()),
        optimizer_tensors=optimizer_tensors,
        optimizer_size_bytes=optimizer_bytes,
        other_size_bytes=other_bytes,
        notes=tuple(notes),
        metadata=all_metadata,
    )


class _KnownMetadataReader(dcp.FileSystemReader):
    """A DCP reader that reuses metadata already read safely, instead of unpickling it again."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self._known_metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._known_metadata


def load_tensors(
    part: ModelPart, entries: Iterable[TensorEntry], dtypes: Mapping[str, torch.dtype]
) -> dict[str, torch.Tensor]:
    """Load ``entries`` (by output name) into fresh full-size tensors of ``dtypes[name]``.

    DCP reads only the byte ranges of these tensors, reassembles shards written by several ranks,
    and casts while copying into the preallocated tensors (the same rounding as ``Tensor.to``).

    Raises:
        ExportError: DCP could not read the data (a missing or truncated shard file).
    """
    by_dir: dict[Path, dict[str, torch.Tensor]] = {}
    names: dict[str, str] = {}
    for entry in entries:
        target = torch.empty(entry.shape, dtype=dtypes[entry.name])
        by_dir.setdefault(entry.dcp_dir, {})[entry.fqn] = target
        names[f"{entry.dcp_dir}\0{entry.fqn}"] = entry.name
    loaded: dict[str, torch.Tensor] = {}
    for dcp_dir, state_dict in by_dir.items():
        reader = _KnownMetadataReader(dcp_dir, part.metadata[dcp_dir])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process"
                dcp.load(
                    state_dict,
                    storage_reader=reader,
                    planner=DefaultLoadPlanner(flatten_state_dict=False),
                    no_dist=True,
                )
        except CheckpointException as exc:  # a BaseException: must be named to be caught
            raise ExportError(
                f"cannot read the tensors of {dcp_dir}: {describe_failure(exc)}; the checkpoint "
                f"is corrupt, export another step (see 'kf-ckpt ls {part.step_dir.parent}')"
            ) from exc
        for fqn, tensor in state_dict.items():
            loaded[names[f"{dcp_dir}\0{fqn}"]] = tensor
    return loaded
