"""How an export is laid out: output dtypes, files (shards) and load batches, from metadata only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from kempnerforge.checkpoint.export._model_records import ModelPart, TensorEntry
from kempnerforge.checkpoint.export._output import OutputTarget, shard_names
from kempnerforge.checkpoint.export._safetensors_io import TensorSpec

__all__ = [
    "FilePlan",
    "batches",
    "file_metadata",
    "out_bytes",
    "output_dtypes",
    "plan_files",
    "specs",
]

FilePlan = tuple[Path, list[TensorEntry]]
"""One output file and the tensors it holds, in file order."""


def output_dtypes(entries: Sequence[TensorEntry], out_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Floating tensors become ``out_dtype``; integer, bool and complex tensors keep theirs."""
    return {e.name: out_dtype if e.dtype.is_floating_point else e.dtype for e in entries}


def out_bytes(entry: TensorEntry, dtypes: dict[str, torch.dtype]) -> int:
    """The size of ``entry`` in its output dtype."""
    return entry.size_bytes // entry.dtype.itemsize * dtypes[entry.name].itemsize


def specs(entries: Sequence[TensorEntry], dtypes: dict[str, torch.dtype]) -> list[TensorSpec]:
    """The safetensors header entries of ``entries``, in order."""
    return [
        TensorSpec(
            name=e.name, shape=e.shape, dtype=dtypes[e.name], size_bytes=out_bytes(e, dtypes)
        )
        for e in entries
    ]


def plan_files(
    entries: Sequence[TensorEntry],
    dtypes: dict[str, torch.dtype],
    target: OutputTarget,
    max_shard_size: int,
) -> list[FilePlan]:
    """Split the tensors, in order, into files of at most ``max_shard_size`` bytes each.

    A single tensor above the limit gets a file of its own, as in ``save_pretrained``.
    """
    if target.single_file:
        return [(target.path, list(entries))]
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = out_bytes(entry, dtypes)
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += nbytes
    names = shard_names(len(groups))
    return [(target.directory / name, group) for name, group in zip(names, groups, strict=True)]


def batches(
    entries: Sequence[TensorEntry], dtypes: dict[str, torch.dtype], batch_bytes: int
) -> Iterator[list[TensorEntry]]:
    """Consecutive runs of ``entries`` of at most ``batch_bytes`` output bytes (at least one)."""
    batch: list[TensorEntry] = []
    size = 0
    for entry in entries:
        nbytes = out_bytes(entry, dtypes)
        if batch and size + nbytes > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += nbytes
    if batch:
        yield batch


def file_metadata(part: ModelPart, dtype: str) -> dict[str, str]:
    """The ``__metadata__`` of every output file (safetensors allows strings only)."""
    metadata = {"format": "pt", "dtype": dtype, "source": str(part.step_dir.resolve())}
    if part.step is not None:
        metadata["step"] = str(part.step)
    if part.tokens_seen is not None:
        metadata["tokens_seen"] = str(part.tokens_seen)
    return metadata
