"""DCP ``.metadata`` read without torch and without running code: what files a checkpoint needs.

DCP's global metadata is a pickle, and a pickle may call any importable function while it is
read (``os.system`` included). This module reads it with an allowlist of the names a DCP
metadata file refers to -- DCP's own data classes, torch dtypes, ``torch.Size``, a path -- and
builds inert stand-ins for them instead of importing torch: nothing named in the file is ever
called. From the stand-ins it takes the one thing completeness needs, the byte ranges of every
shard file (``storage_data``): :func:`read_manifest` returns, per file, the least size that
holds every range recorded in it.

The same allowlist (:func:`is_allowed_global`) guards the torch reader of
:mod:`kempnerforge.checkpoint.export._dcp_meta`, which builds the real objects.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DCP_MODULE_PREFIX",
    "MAX_MANIFEST_BYTES",
    "SAFE_GLOBALS",
    "Manifest",
    "ManifestError",
    "is_allowed_global",
    "read_manifest",
]

DCP_MODULE_PREFIX = "torch.distributed.checkpoint."
"""Classes defined in DCP's own modules are allowed (its metadata data classes)."""
SAFE_GLOBALS = frozenset(
    {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
    }
)
"""The other names a DCP metadata pickle refers to (besides torch dtypes)."""
MAX_MANIFEST_BYTES = 2 * 2**30
"""A ``.metadata`` larger than this is not read (a real one is kilobytes to a few hundred MB)."""

_DTYPE_RE = re.compile(
    r"(bool|u?int\d+|float\d+\w*|bfloat16|complex\d+|c?half|double|"
    r"cfloat|cdouble|long|short|qu?int\w+|bits\w+)"
)


class ManifestError(Exception):
    """A ``.metadata`` file cannot be read as DCP metadata; the message says why."""


def is_allowed_global(module: str, name: str) -> bool:
    """May a DCP metadata pickle refer to ``module.name``? (The real object is checked too.)"""
    if (module, name) in SAFE_GLOBALS:
        return True
    if module == "torch":
        return _DTYPE_RE.fullmatch(name) is not None
    return module.startswith(DCP_MODULE_PREFIX) and name.isidentifier()


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What one DCP ``.metadata`` records about its shard files."""

    files: dict[str, int]
    """Relative name of every shard file -> the least size that holds its recorded bytes."""
    entries: int
    """State-dict entries recorded (tensors and byte objects)."""


class _Inert:
    """Stand-in for an allowlisted DCP class: records what the pickle gives it, runs nothing."""

    __slots__ = ("args", "state")
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def fields(self) -> dict[str, Any]:
        """The pickled instance fields (``__dict__`` and slots states are both dicts)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}


_INERT_CLASSES: dict[tuple[str, str], type[_Inert]] = {}


def _inert_class(module: str, name: str) -> type[_Inert]:
    cls = _INERT_CLASSES.get((module, name))
    if cls is None:
        cls = type(name, (_Inert,), {"__slots__": (), "__module__": "kempnerforge.inert"})
        _INERT_CLASSES[(module, name)] = cls
    return cls


def _size(*args: Any) -> tuple[Any, ...]:
    return tuple(args[0]) if args and isinstance(args[0], list | tuple) else ()


def _name(*args: Any) -> str:
    return "/".join(str(a) for a in args)


_STAND_INS: dict[tuple[str, str], Any] = {
    ("torch", "Size"): _size,
    ("torch.serialization", "_get_layout"): _name,
    ("pathlib", "PosixPath"): _name,
    ("pathlib", "PurePosixPath"): _name,
    ("collections", "OrderedDict"): dict,
}


class _ManifestUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not is_allowed_global(module, name):
            raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type")
        stand_in = _STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if module == "torch":
            return f"torch.{name}"  # a dtype, referred to by name
        return _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("DCP metadata has no persistent references")


def read_manifest(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> Manifest:
    """Read the DCP ``.metadata`` at ``path`` (no symlink followed at its end unless it is one
    the caller accepted; FIFOs are never opened for a blocking read).

    Raises:
        ManifestError: the file is missing, empty, truncated, too large, not DCP metadata, or
            refers to a name outside the allowlist.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ManifestError("missing") from None
    except OSError as exc:
        raise ManifestError(f"cannot open it: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError("not a regular file")
        if st.st_size == 0:
            raise ManifestError("empty (0 bytes)")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{st.st_size} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
        data = _read_all(fd, st.st_size)
    except OSError as exc:
        raise ManifestError(f"cannot read it: {exc.strerror}") from exc
    finally:
        os.close(fd)
    fh = io.BytesIO(data)
    try:
        root = _ManifestUnpickler(fh).load()
    except EOFError:
        raise ManifestError("truncated (ends before the pickle does)") from None
    except RecursionError:
        raise ManifestError("nested too deep") from None
    except MemoryError:
        raise ManifestError("too large to read") from None
    except Exception as exc:  # any malformed pickle: corrupt, never a crash
        raise ManifestError(f"not DCP metadata ({type(exc).__name__}: {exc})") from exc
    if fh.read(1):
        raise ManifestError("trailing bytes after the pickle")
    return _manifest_of(root)


def _read_all(fd: int, size: int) -> bytes:
    """The whole file open as ``fd`` (``size`` bytes by its ``fstat``; a file that grows is cut)."""
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 2**24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _manifest_of(root: Any) -> Manifest:
    if not isinstance(root, _Inert) or type(root).__name__ != "Metadata":
        raise ManifestError(f"not DCP metadata (a pickled {_describe(root)})")
    fields = root.fields()
    state_dict = fields.get("state_dict_metadata")
    storage = fields.get("storage_data")
    if not isinstance(state_dict, dict):
        raise ManifestError("not DCP metadata (no state_dict_metadata table)")
    if not isinstance(storage, dict):
        raise ManifestError("records no storage_data (which shard holds what)")
    files: dict[str, int] = {}
    for info in storage.values():
        rel, end = _byte_range(info)
        if files.get(rel, -1) < end:
            files[rel] = end
    return Manifest(files=files, entries=len(state_dict))


def _byte_range(info: Any) -> tuple[str, int]:
    fields = info.fields() if isinstance(info, _Inert) else {}
    rel, offset, length = fields.get("relative_path"), fields.get("offset"), fields.get("length")
    if not isinstance(rel, str) or type(offset) is not int or type(length) is not int:
        raise ManifestError(f"a storage_data entry is malformed ({_describe(info)})")
    if not rel or "/" in rel or "\0" in rel or rel in (".", ".."):
        raise ManifestError(f"names a shard file outside its directory: {rel!r}")
    if offset < 0 or length < 0:
        raise ManifestError(f"a negative byte range in {rel!r}")
    return rel, offset + length


def _describe(obj: Any) -> str:
    return type(obj).__name__
