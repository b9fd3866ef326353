"""Stream the model part of a DCP checkpoint into safetensors, in bfloat16 or float32.

The plan comes from the DCP metadata alone (names, shapes, dtypes, sizes); the optimizer state,
about twice the model, is never read. Tensors are loaded in bounded batches with ``dcp.load``
into preallocated tensors of the output dtype and appended to the output file as they arrive, so
peak memory stays near one batch (``batch_bytes``, or the largest tensor when that is bigger)
whatever the checkpoint size. Shards written by several ranks
(FSDP2 / DTensor) are reassembled and pipeline-parallel ``pp*/`` stages are merged. Nothing is
published until every file is complete (and verified, when asked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kempnerforge.checkpoint.export import _output as output
from kempnerforge.checkpoint.export._dcp_meta import load_tensors
from kempnerforge.checkpoint.export._model_part import plan_model_part
from kempnerforge.checkpoint.export._model_records import ModelPart, SelectionRule, TensorEntry
from kempnerforge.checkpoint.export._plan import (
    batches,
    file_metadata,
    out_bytes,
    output_dtypes,
    plan_files,
    specs,
)
from kempnerforge.checkpoint.export._safetensors_io import SafetensorsWriter
from kempnerforge.checkpoint.export._verify import (
    published_files,
    read_file_header,
    verify_file,
    verify_message,
)
from kempnerforge.checkpoint.store.resolve import leased_checkpoint
from kempnerforge.config.checkpoint import EXPORT_DTYPES
from kempnerforge.errors import ConfigError, ExportError, VerifyError, describe_os_error

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_MAX_SHARD_SIZE",
    "ExportResult",
    "ProgressCallback",
    "export_safetensors",
    "verify_export",
]

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
"""Shard above this many bytes, like ``save_pretrained``'s ``"5GB"``."""
DEFAULT_BATCH_BYTES = 256 * 2**20
"""Output bytes loaded per ``dcp.load`` call: the bound on the tensor memory of an export."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done_bytes, total_bytes)`` after each tensor is written."""


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What :func:`export_safetensors` wrote."""

    output: Path
    files: tuple[Path, ...]
    step_dir: Path
    step: int | None
    """None when neither ``metadata.json`` nor the directory name records one."""
    dtype: str
    tensors: int
    size_bytes: int
    """Tensor bytes written (headers excluded)."""
    elapsed_s: float
    verified: bool
    rule: SelectionRule
    """Which rule chose the exported tensors (see :func:`plan_model_part`)."""
    notes: tuple[str, ...]


def export_safetensors(
    src: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    dtype: str = "bfloat16",
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    force: bool = False,
    verify: bool = False,
    progress: ProgressCallback | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> ExportResult:
    """Export the model weights of a checkpoint as safetensors.

    Args:
        src: a checkpoint directory (any directory holding a DCP ``.metadata``, whoever wrote
            it), or a checkpoint root (then ``step``, default the newest complete checkpoint).
        out: a path ending in ``.safetensors`` (one file), else a directory that receives
            ``model.safetensors`` or, above ``max_shard_size``, shards plus an index.
        step: which checkpoint of a root to export.
        dtype: ``"bfloat16"`` or ``"float32"``; floating tensors are cast, integer and bool
            tensors keep their dtype.
        max_shard_size: largest shard in bytes (a bigger single tensor gets a shard of its own).
        batch_bytes: output bytes loaded per batch; bounds peak memory.
        force: replace an existing export (only after the new one is complete).
        verify: re-read the written files and compare every tensor with the checkpoint's value
            cast to the output dtype, before publishing them.
        progress: called with ``(done_bytes, total_bytes)`` as tensors are written.
        include: glob patterns on dotted names that replace the model-part rule (for layouts it
            does not know); see :func:`~kempnerforge.checkpoint.export._model_part.plan_model_part`.
        exclude: glob patterns on dotted names of tensors to leave out.

    Raises:
        ConfigError: a bad ``dtype``, ``max_shard_size`` or ``batch_bytes``.
        CheckpointRootError, CheckpointNotFoundError: ``src``/``step`` name no checkpoint.
        CorruptCheckpointError: the checkpoint is incomplete or its metadata is unreadable.
        OutputExistsError: ``out`` exists and ``force`` is off.
        ExportError: the selection holds no tensor, or the tensors could not be read; nothing
            was published.
        VerifyError: ``verify`` found a difference; nothing was published.

    Example:
        >>> result = export_safetensors("runs/a", "hf/", step=1500)  # doctest: +SKIP
        >>> result.files  # doctest: +SKIP
        (PosixPath('hf/model.safetensors'),)
    """
    started = time.monotonic()
    out_dtype = _check_options(dtype, max_shard_size, batch_bytes)
    output.check_output_path(Path(out))
    with leased_checkpoint(src, step) as step_dir:
        part = plan_model_part(step_dir, include=include, exclude=exclude)
        target = output.prepare_output(Path(out), force=force)
        dtypes = output_dtypes(part.tensors, out_dtype)
        plan = plan_files(part.tensors, dtypes, target, max_shard_size)
        total_bytes = sum(out_bytes(e, dtypes) for e in part.tensors)
        metadata = file_metadata(part, dtype)
        created = output.make_dirs(target)
        output.remove_stale_temps(target)
        finished: list[tuple[Path, Path]] = []
        written = [0]

        def on_tensor(size_bytes: int) -> None:
            written[0] += size_bytes
            if progress is not None:
                progress(written[0], total_bytes)

        try:
            for final, entries in plan:
                tmp = _write_file(part, final, entries, dtypes, metadata, batch_bytes, on_tensor)
                finished.append((tmp, final))
            if verify:
                problems = [
                    problem
                    for (tmp, final), (_, entries) in zip(finished, plan, strict=True)
                    for problem in verify_file(part, tmp, final.name, entries, dtypes, batch_bytes)
                ]
                if problems:
                    raise VerifyError(verify_message(problems, nothing_published=True))
            if len(plan) > 1:
                index = target.directory / output.INDEX_FILE
                weight_map = {e.name: final.name for final, entries in plan for e in entries}
                finished.append((output.write_index(index, weight_map, total_bytes), index))
            output.publish(target, finished)
        except BaseException as exc:
            output.discard([tmp for tmp, _ in finished], created)
            if isinstance(exc, OSError):  # a full disk, a read-only directory, a quota
                raise ExportError(
                    f"cannot write the export to {target.path}: {describe_os_error(exc)}; "
                    "nothing was published"
                ) from exc
            raise
        return ExportResult(
            output=target.path,
            files=tuple(final for final, _ in plan),
            step_dir=step_dir,
            step=part.step,
            dtype=dtype,
            tensors=len(part.tensors),
            size_bytes=total_bytes,
            elapsed_s=time.monotonic() - started,
            verified=verify,
            rule=part.rule,
            notes=part.notes,
        )


def verify_export(
    src: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> int:
    """Compare a published export with the checkpoint it came from; return the tensors checked.

    Every tensor of the model part must be in the output exactly once, equal to the checkpoint's
    value cast to the dtype recorded in the file's ``__metadata__``. ``include`` and
    ``exclude`` must be those the export was made with.

    Raises:
        VerifyError: a tensor is missing, extra, or differs, or a file cannot be read.
    """
    with leased_checkpoint(src, step) as step_dir:
        part = plan_model_part(step_dir, include=include, exclude=exclude)
        by_name = {e.name: e for e in part.tensors}
        problems: list[str] = []
        seen: set[str] = set()
        for path in published_files(Path(out)):
            try:
                names, metadata = read_file_header(path)
            except VerifyError as exc:
                problems.append(str(exc))
                continue
            recorded = metadata.get("dtype")
            if recorded not in EXPORT_DTYPES:
                problems.append(
                    f"{path.name}: __metadata__ dtype is {recorded!r}, not an export dtype"
                )
                continue
            entries = [by_name[n] for n in names if n in by_name and n not in seen]
            seen.update(e.name for e in entries)
            dtypes = output_dtypes(entries, getattr(torch, recorded))
            problems += verify_file(part, path, path.name, entries, dtypes, batch_bytes)
        problems += [f"tensor {n!r} is missing from the output" for n in by_name if n not in seen]
        if problems:
            raise VerifyError(verify_message(problems, nothing_published=False))
        return len(seen)


def _check_options(dtype: str, max_shard_size: int, batch_bytes: int) -> torch.dtype:
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if max_shard_size <= 0:
        raise ConfigError(f"max shard size must be positive, got {max_shard_size}")
    if batch_bytes <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_bytes}")
    dtype_value: torch.dtype = getattr(torch, dtype)
    return dtype_value


def _write_file(
    part: ModelPart,
    final: Path,
    entries: Sequence[TensorEntry],
    dtypes: dict[str, torch.dtype],
    metadata: dict[str, str],
    batch_bytes: int,
    on_tensor: Callable[[int], None],
) -> Path:
    """Write one output file to its temporary name, batch by batch; return that name."""
    writer = SafetensorsWriter(final, specs(entries, dtypes), metadata)
    try:
        for batch in batches(entries, dtypes, batch_bytes):
            _write_batch(part, writer, batch, dtypes, on_tensor)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _write_batch(
    part: ModelPart,
    writer: SafetensorsWriter,
    batch: list[TensorEntry],
    dtypes: dict[str, torch.dtype],
    on_tensor: Callable[[int], None],
) -> None:
    # A function of its own so that the batch's tensors are freed before the next batch loads.
    loaded = load_tensors(part, batch, dtypes)
    for entry in batch:
        writer.write(entry.name, loaded.pop(entry.name))
        on_tensor(out_bytes(entry, dtypes))
