"""Compare exported safetensors files with the checkpoint they came from, batch by batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from kempnerforge.checkpoint.export._dcp_meta import load_tensors
from kempnerforge.checkpoint.export._model_records import ModelPart, TensorEntry
from kempnerforge.checkpoint.export._output import INDEX_FILE, SINGLE_FILE
from kempnerforge.checkpoint.export._plan import batches
from kempnerforge.errors import VerifyError

__all__ = ["published_files", "read_file_header", "verify_file", "verify_message"]

_MAX_REPORTED = 10


def verify_file(
    part: ModelPart,
    path: Path,
    label: str,
    entries: Sequence[TensorEntry],
    dtypes: dict[str, torch.dtype],
    batch_bytes: int,
) -> list[str]:
    """Differences between the file at ``path`` and the checkpoint's values of ``entries``.

    Memory: one batch of expected tensors plus one tensor read back from the file.
    """
    problems: list[str] = []
    try:
        with safe_open(path, framework="pt") as fh:
            names = set(fh.keys())
            wanted = {e.name for e in entries}
            problems += [f"{label}: unexpected tensor {n!r}" for n in sorted(names - wanted)]
            problems += [f"{label}: tensor {n!r} is missing" for n in sorted(wanted - names)]
            for batch in batches([e for e in entries if e.name in names], dtypes, batch_bytes):
                expected = load_tensors(part, batch, dtypes)
                for entry in batch:
                    problem = _compare(fh.get_tensor(entry.name), expected.pop(entry.name))
                    if problem:
                        problems.append(f"{label}: tensor {entry.name!r} {problem}")
    except (OSError, SafetensorError) as exc:
        problems.append(f"{label}: cannot read: {exc}")
    return problems


def _compare(actual: torch.Tensor, expected: torch.Tensor) -> str | None:
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return (
            f"is {actual.dtype} {tuple(actual.shape)}, expected {expected.dtype} "
            f"{tuple(expected.shape)}"
        )
    # Bitwise, so that NaN payloads and signed zeros count too.
    got = actual.reshape(-1).view(torch.uint8)
    want = expected.reshape(-1).view(torch.uint8)
    if torch.equal(got, want):
        return None
    first = int((got != want).nonzero()[0]) // expected.element_size()
    return f"differs from the checkpoint (first at flat index {first})"


def read_file_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and ``__metadata__`` of a safetensors file.

    Raises:
        VerifyError: the file is missing or is not safetensors.
    """
    try:
        with safe_open(path, framework="pt") as fh:
            return list(fh.keys()), dict(fh.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise VerifyError(f"{path}: cannot read: {exc}; export again") from exc


def published_files(out: Path) -> list[Path]:
    """The weight files of a published export: the file itself, the index's files, or the one.

    Raises:
        VerifyError: the index is unreadable.
    """
    if out.name.endswith(".safetensors") or out.is_file():
        return [out]
    index = out / INDEX_FILE
    if not index.is_file():
        return [out / SINGLE_FILE]
    try:
        names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerifyError(f"{index} is not a valid index ({exc}); export again") from exc
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise VerifyError(f"{index} names files outside its directory: {bad[:3]}; export again")
    return [out / name for name in sorted(names)]


def verify_message(problems: list[str], *, nothing_published: bool) -> str:
    """One error message for a list of differences (the first few, then a count)."""
    shown = "; ".join(problems[:_MAX_REPORTED])
    extra = len(problems) - _MAX_REPORTED
    more = f" (and {extra} more)" if extra > 0 else ""
    tail = "nothing was published; " if nothing_published else ""
    return f"verification failed: {shown}{more}; {tail}check the disk and export again"
