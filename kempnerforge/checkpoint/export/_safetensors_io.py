"""Write a safetensors file as a stream, one tensor at a time, to a temporary name.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header mapping each tensor name to ``dtype``, ``shape`` and ``data_offsets`` (plus a
``__metadata__`` dict of strings), padded with spaces to a multiple of 8 bytes, then the raw
little-endian tensor bytes back to back. Because every shape is known from the DCP metadata
before any data is read, the header is written first and each tensor is appended as soon as it
is loaded: the file is never held in memory whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from kempnerforge.checkpoint.store.files import temp_name
from kempnerforge.errors import ExportError

__all__ = [
    "SAFETENSORS_DTYPES",
    "SafetensorsWriter",
    "TensorSpec",
    "encode_header",
    "temp_path",
]

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A tensor as it will appear in the file."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    size_bytes: int


def encode_header(specs: Sequence[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The length prefix and the padded JSON header for ``specs`` laid out in order."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        code = SAFETENSORS_DTYPES.get(spec.dtype)
        if code is None:
            raise ExportError(
                f"tensor {spec.name!r} has dtype {spec.dtype}, which safetensors cannot store"
            )
        header[spec.name] = {
            "dtype": code,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.size_bytes],
        }
        offset += spec.size_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def temp_path(final: Path) -> Path:
    """The hidden sibling a file is written to before it is renamed to ``final``."""
    return final.with_name(temp_name(final.name))


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A flat byte view of the tensor's own memory: no copy for a contiguous CPU tensor.
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


class SafetensorsWriter:
    """Append tensors, in the order of ``specs``, to ``temp_path(final)``; then fsync it.

    The caller renames the finished temporary file into place (see ``export``), or calls
    :meth:`abort` to remove it.
    """

    def __init__(self, final: Path, specs: Sequence[TensorSpec], metadata: dict[str, str]) -> None:
        if sys.byteorder != "little":
            raise ExportError("safetensors export needs a little-endian machine")
        self.final = final
        self.tmp = temp_path(final)
        self._specs = list(specs)
        self._next = 0
        header = encode_header(self._specs, metadata)
        self._fh: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 (closed in finish/abort)
        try:
            self._fh.write(header)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; its name, dtype and shape must match the planned spec."""
        assert self._fh is not None, "writer already finished"
        spec = self._specs[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (spec.name, spec.dtype, spec.shape):
            raise AssertionError(
                f"expected {spec.name} {spec.dtype} {spec.shape}, got {name} {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
        self._fh.write(_tensor_bytes(tensor))
        self._next += 1

    def finish(self) -> Path:
        """Flush and fsync the complete temporary file; return its path."""
        assert self._fh is not None, "writer already finished"
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            raise AssertionError(f"{self.final}: tensor {missing!r} was never written")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
            self._fh = None
        return self.tmp

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
