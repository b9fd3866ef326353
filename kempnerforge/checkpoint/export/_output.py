"""Where an export goes: one ``.safetensors`` file, or a directory in the Hugging Face layout.

A directory holds ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` shards plus
``model.safetensors.index.json``. Only those names are ever replaced or removed in it (with
``force``), so exporting into a directory that also holds ``config.json`` or a tokenizer is safe,
and ``--force`` never deletes anything else. Every file is first written to a hidden temporary
sibling; :func:`publish` renames them into place once all are complete (shards first, the index
last) and only then removes files of an older export that the new one does not replace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.export._safetensors_io import temp_path
from kempnerforge.checkpoint.store.files import TempName, fsync_dir, parse_temp_name
from kempnerforge.checkpoint.store.paths import managed_path_reason
from kempnerforge.errors import ExportError, OutputExistsError, Remedy, UnsafeOutputError

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "OutputTarget",
    "check_output_path",
    "discard",
    "export_files",
    "make_dirs",
    "prepare_output",
    "publish",
    "remove_stale_temps",
    "shard_names",
    "write_index",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def shard_names(count: int) -> list[str]:
    """``model.safetensors`` for one file, else ``model-0000i-of-0000N.safetensors``."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _is_export_file(name: str) -> bool:
    return name in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.fullmatch(name) is not None


@dataclass(frozen=True, kw_only=True)
class OutputTarget:
    """A checked output location: what will be written and what is already there."""

    path: Path
    directory: Path
    """The directory the files go into (the parent of a single file)."""
    single_file: bool
    existing: tuple[Path, ...]
    """Files of an earlier export that publishing replaces or removes (``force`` only)."""


def check_output_path(out: Path) -> None:
    """Refuse an output inside what a checkpoint root manages, before anything is read.

    A step directory (an export there would change a checkpoint, or a new ``step_<N>`` would
    look like an unfinished save), the trash (emptied by the next gc), the lock, the cache, or
    any DCP checkpoint directory.

    Raises:
        UnsafeOutputError: ``out`` is such a path.
    """
    try:
        reason = managed_path_reason(out)
    except OSError as exc:
        raise ExportError(f"cannot check the output path {out}: {exc.strerror}") from exc
    if reason is not None:
        raise UnsafeOutputError(
            f"will not write the export to {out}: {reason}; pick a path outside the "
            "checkpoint root's managed entries (a sibling of the root, for example)"
        )


def prepare_output(out: Path, *, force: bool) -> OutputTarget:
    """Check ``out`` before anything is read or written.

    Raises:
        OutputExistsError: an export is already there and ``force`` is off, or ``out`` is of the
            wrong kind (a directory where a file is asked for, or the other way round).
    """
    if out.name.endswith(".safetensors"):
        if out.is_dir():
            raise OutputExistsError(
                f"{out} is a directory; name a file ending in .safetensors or a directory "
                "without that suffix"
            )
        existing: tuple[Path, ...] = (out,) if out.exists() or out.is_symlink() else ()
        directory, single = out.parent, True
    else:
        if out.exists() and not out.is_dir():
            raise OutputExistsError(
                f"{out} exists and is not a directory; pass a directory, or a path ending in "
                ".safetensors to write one file"
            )
        existing = export_files(out) if out.is_dir() else ()
        directory, single = out, False
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputExistsError(f"output exists: {shown}", remedy=Remedy.force)
    return OutputTarget(path=out, directory=directory, single_file=single, existing=existing)


def export_files(directory: Path) -> tuple[Path, ...]:
    """The safetensors export files (weights and index) directly in ``directory``, sorted."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return tuple(sorted(p for p in directory.iterdir() if _is_export_file(p.name)))
    return ()


def make_dirs(target: OutputTarget) -> list[Path]:
    """Create the output directory (and missing parents); return those created, deepest first."""
    created: list[Path] = []
    path = target.directory
    while not path.exists():
        created.append(path)
        path = path.parent
    try:
        target.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0)
        raise ExportError(
            f"cannot create output directory {target.directory}: {exc.strerror}"
            + (f" ({name})" if name else "")
        ) from exc
    return created


def write_index(final: Path, weight_map: dict[str, str], total_size_bytes: int) -> Path:
    """Write ``model.safetensors.index.json`` to its temporary name; return that name."""
    document = {
        "metadata": {"total_size": total_size_bytes},
        "weight_map": dict(sorted(weight_map.items())),
    }
    tmp = temp_path(final)
    with open(tmp, "wb") as fh:
        fh.write((json.dumps(document, indent=2) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def publish(target: OutputTarget, files: Sequence[tuple[Path, Path]]) -> None:
    """Rename each finished ``(temporary, final)`` file into place, then drop stale old files.

    The index comes last in ``files``, so a reader never finds an index naming missing shards.
    """
    for tmp, final in files:
        os.replace(tmp, final)
    fsync_dir(target.directory)
    finals = {final for _, final in files}
    stale = [path for path in target.existing if path not in finals]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if stale:
        fsync_dir(target.directory)


def discard(temps: Sequence[Path], created_dirs: Sequence[Path]) -> None:
    """Remove unpublished temporary files, then the directories this export created (if empty)."""
    for tmp in temps:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    for directory in created_dirs:
        with contextlib.suppress(OSError):
            directory.rmdir()


def remove_stale_temps(target: OutputTarget) -> list[Path]:
    """Delete temporary files that a killed export on this host left where ``target`` goes.

    Only the temp names of export files (see
    :func:`~kempnerforge.checkpoint.store.files.temp_name`) are considered, and only when
    ``<host>`` is this machine and no process ``<pid>`` runs (on a shared file system another
    node's export may still be writing its own). Returns the files removed.
    """
    removed: list[Path] = []
    host = os.uname().nodename
    for path, temp in _temps(target.directory):
        ours = _is_export_file(temp.final) or (
            target.single_file and temp.final == target.path.name
        )
        if not ours or temp.host != host or _alive(temp.pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _temps(directory: Path) -> list[tuple[Path, TempName]]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [(p, t) for p in directory.iterdir() if (t := parse_temp_name(p.name))]
    return []


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
