"""Read a checkpoint's DCP metadata safely, and load chosen tensors in bounded batches.

The ``.metadata`` pickle is read with an allowlist of DCP metadata types, so listing, exporting
or loading a checkpoint from someone else never runs code from it; :func:`load_tensors` and
:class:`SafeFileSystemReader` hand the already read metadata to DCP instead of letting it
unpickle the file again. Which tensors are the model is decided in :mod:`._model_part`.
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import stat
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    Metadata,
    StorageMeta,
)

from kempnerforge.checkpoint.export._dcp_failure import describe_failure
from kempnerforge.checkpoint.store._manifest import MAX_MANIFEST_BYTES, is_allowed_global
from kempnerforge.checkpoint.store.layout import DCP_METADATA
from kempnerforge.errors import CorruptCheckpointError, ExportError

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export._model_records import ModelPart, TensorEntry

__all__ = ["SafeFileSystemReader", "load_error", "load_tensors", "read_dcp_metadata"]


_SAFE_MODULE_PREFIX = "torch.distributed.checkpoint."
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP ``.metadata`` only: DCP's own data classes, torch dtypes and sizes.

    The names allowed are those of the torch-free reader of the same files
    (:func:`~kempnerforge.checkpoint.store._manifest.is_allowed_global`), and the real object
    must be what it claims.
    """

    def find_class(self, module: str, name: str) -> Any:
        if not is_allowed_global(module, name):
            raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type")
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_SAFE_MODULE_PREFIX):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and obj.__module__.startswith(_SAFE_MODULE_PREFIX):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("DCP metadata has no persistent references")


def read_dcp_metadata(dcp_dir: Path) -> Metadata:
    """Read the DCP ``.metadata`` of one DCP tree (a step dir or a ``pp<k>/`` stage dir).

    Never runs code from the file (see :class:`_MetadataUnpickler`); a FIFO is not waited on and
    a file over :data:`~kempnerforge.checkpoint.store._manifest.MAX_MANIFEST_BYTES` is refused.

    Raises:
        CorruptCheckpointError: the file is missing, truncated, too large, or not DCP metadata;
            the message names the file and what to do.
    """
    path = dcp_dir / DCP_METADATA
    hint = f"pick another with 'kf-ckpt ls {dcp_dir.parent}'"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if not dcp_dir.exists():
            raise CorruptCheckpointError(
                f"{dcp_dir} was deleted while it was being read (by a gc?); {hint}"
            ) from exc
        raise CorruptCheckpointError(
            f"no DCP metadata {path}: the checkpoint is incomplete; {hint}"
        ) from exc
    except OSError as exc:
        raise CorruptCheckpointError(
            f"cannot open DCP metadata {path}: {exc.strerror}; {hint}"
        ) from exc
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
                raise CorruptCheckpointError(
                    f"DCP metadata {path} is not a regular file of at most "
                    f"{MAX_MANIFEST_BYTES} bytes; the checkpoint is corrupt, {hint}"
                )
            metadata = _MetadataUnpickler(fh).load()
    except CorruptCheckpointError:
        raise
    except Exception as exc:  # any malformed pickle (EOF, bad opcode, refused name): corrupt
        why = "it ends early (truncated)" if isinstance(exc, EOFError) else f"{exc}"
        raise CorruptCheckpointError(
            f"cannot read DCP metadata {path}: {why}; the checkpoint is incomplete or corrupt, "
            f"{hint}"
        ) from exc
    if not isinstance(metadata, Metadata):
        raise CorruptCheckpointError(f"{path} is not DCP metadata ({type(metadata).__name__})")
    return metadata


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's file-system reader, with its ``.metadata`` read through the allowlist.

    ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with plain :mod:`pickle`, which
    runs whatever the file asks for. This subclass overrides only that public method: the file
    is read by :func:`read_dcp_metadata` (or ``metadata`` already read that way is reused), so
    loading a checkpoint from someone else never runs code from it.

    Example:
        >>> dcp.load(state, storage_reader=SafeFileSystemReader(step_dir))  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, metadata: Metadata | None = None) -> None:
        super().__init__(path)
        self._dcp_dir = Path(path)
        self._known_metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = self._known_metadata
        if metadata is None:
            metadata = self._known_metadata = read_dcp_metadata(self._dcp_dir)
        storage_meta = getattr(metadata, "storage_meta", None)
        if storage_meta is None:
            storage_meta = metadata.storage_meta = StorageMeta()
        storage_meta.load_id = self.load_id
        return metadata


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
        reader = SafeFileSystemReader(dcp_dir, part.metadata[dcp_dir])
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


def load_error(exc: CheckpointException, dcp_dir: Path) -> CorruptCheckpointError:
    """The error to raise for a failed ``dcp.load`` of ``dcp_dir``, one line, naming the file.

    A :class:`CorruptCheckpointError` raised inside DCP (by :class:`SafeFileSystemReader`) on
    any rank is passed on as it is; any other failure is described by its first rank's error.
    """
    for failure in exc.failures.values():
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, CorruptCheckpointError):
            return inner
    return CorruptCheckpointError(
        f"cannot load the tensors of {dcp_dir}: {describe_failure(exc)}; the checkpoint is "
        f"corrupt, resume from another (see 'kf-ckpt ls {dcp_dir.parent}')"
    )
