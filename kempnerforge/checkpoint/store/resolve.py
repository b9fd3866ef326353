"""Which checkpoint a command that reads one means, and a read lease on it while it reads.

A source is a checkpoint directory (any DCP checkpoint, whatever its name, or ``ROOT/latest``),
or a checkpoint root with a step (by default the newest checkpoint that passes the full check).
Torch-free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import (
    LATEST_NAME,
    METADATA_JSON,
    guess_step,
    holds_dcp_checkpoint,
    list_foreign_checkpoints,
    list_step_dirs,
    parse_step,
    step_dir_name,
)
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.errors import CheckpointRootError, Remedy

__all__ = [
    "leased",
    "leased_checkpoint",
    "newest_complete",
    "resolve_checkpoint",
    "split_checkpoint_path",
]


def split_checkpoint_path(src: str | Path) -> tuple[Path, int | None]:
    """``(root, step)`` for one checkpoint directory ``src``; ``(src, None)`` for anything else.

    ``src`` names one checkpoint when its own name is a canonical ``step_<N>`` and it holds no
    ``step_<N>`` directories itself (then it is not a root); its root is its parent directory.

    Raises:
        CheckpointRootError: ``src`` does not exist or is not a directory.
    """

    path = Path(src)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise CheckpointRootError(f"{path} {what}; pass a checkpoint root or a step_<N> dir")
    named = path if path.name else path.absolute()  # "." or ".." name the directory they are
    step = parse_step(named.name)
    if step is None:
        return path, None
    try:
        nested = bool(list_step_dirs(path))
    except OSError:
        nested = False
    return (path, None) if nested else (named.parent, step)


def newest_complete(root: Path, *, skipped: list[str] | None = None) -> Path | None:
    """The newest verifiably complete checkpoint directory under ``root``, or None.

    Newest first, each candidate gets the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint` until one passes; a corrupt
    one is passed over (and described in ``skipped``, when given). None also for no root.
    """
    try:
        dirs = list_step_dirs(root)
    except OSError:
        return None
    for _, path in reversed(dirs):
        verdict = verify_checkpoint(path)
        if verdict.complete:
            return path
        if verdict.corrupt and skipped is not None:
            skipped.append(f"{path.name} is corrupt ({verdict.reason})")
    return None


def resolve_checkpoint(src: str | Path, step: int | None = None) -> Path:
    """The verifiably complete checkpoint directory that ``src`` (and ``step``) name.

    ``src`` is either one checkpoint directory -- any directory holding a DCP ``.metadata``
    (or ``pp<k>/`` stages), whatever its name and whoever wrote it, or the root's ``latest``
    link -- or a checkpoint root; for a root, ``step`` picks the checkpoint (a ``step_<N>``
    child, else another tool's ``step-<N>``), and by default the newest verifiably complete
    ``step_<N>`` one is used. Every checkpoint returned passed the full check of
    :func:`~kempnerforge.checkpoint.store.verify.verify_checkpoint`.

    Raises:
        CheckpointRootError: ``src`` does not exist or is not a directory.
        CheckpointNotFoundError: no checkpoint of that step, or no complete one at all.
        CorruptCheckpointError: the named checkpoint is incomplete or corrupt.
    """
    from kempnerforge.errors import (
        CheckpointNotFoundError,
        CorruptCheckpointError,
    )

    path = _follow_latest(Path(src))
    if not path.exists():
        raise CheckpointRootError(
            f"{path} does not exist; pass a checkpoint root or a checkpoint directory"
        )
    if not path.is_dir():
        raise CheckpointRootError(
            f"{path} is not a directory; pass a checkpoint root or a checkpoint directory"
        )
    own_step = parse_step(path.name)
    is_checkpoint = holds_dcp_checkpoint(path) or (
        own_step is not None and (path / METADATA_JSON).exists()
    )
    if is_checkpoint:
        named = own_step if own_step is not None else guess_step(path.name)
        if step is not None and named is not None and step != named:
            raise CheckpointNotFoundError(
                f"{path} is the checkpoint of step {named}, not {step}", remedy=Remedy.drop_step
            )
        target = path
    else:
        foreign = list_foreign_checkpoints(path)
        if step is None:
            passed_over: list[str] = []
            newest = newest_complete(path, skipped=passed_over)
            if newest is None:
                raise CheckpointNotFoundError(_nothing_under(path, foreign, passed_over))
            return newest
        matches = [p for s, p in list_step_dirs(path) if s == step]
        matches += [p for p in foreign if guess_step(p.name) == step]
        if not matches:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {step} under {path}; run 'kf-ckpt ls {path}'"
            )
        target = matches[0]
    verdict = verify_checkpoint(target)
    if not verdict.complete:
        state = "corrupt" if verdict.corrupt else "incomplete"
        raise CorruptCheckpointError(
            f"checkpoint {target} is {state} ({verdict.reason}); pick a complete one "
            f"with 'kf-ckpt ls {target.parent}'"
        )
    return target


def _nothing_under(root: Path, foreign: list[Path], passed_over: list[str]) -> str:
    if not foreign:
        also = f" ({'; '.join(passed_over)})" if passed_over else ""
        return f"no complete checkpoint under {root}{also}; run 'kf-ckpt ls {root}'"
    names = ", ".join(p.name for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (
        f"no step_<N> checkpoint under {root}, but it holds {len(foreign)} DCP checkpoint"
        f"{'s' if len(foreign) > 1 else ''} written under other names ({names}); pass one of "
        f"them, e.g. {foreign[-1]}, or its step"
    )


@contextlib.contextmanager
def leased_checkpoint(src: str | Path, step: int | None = None) -> Iterator[Path]:
    """:func:`resolve_checkpoint`, holding a read lease on the result for the ``with`` block.

    While the lease is held gc does not delete the checkpoint (a long export is not cut off);
    a gc that was already moving it away when the lease was asked for has finished by the time
    it is granted, and then the checkpoint is reported as deleted, not as corrupt.

    Raises:
        CheckpointNotFoundError: also when the checkpoint was deleted before the lease began.
    """
    with leased(resolve_checkpoint(src, step)) as step_dir:
        yield step_dir


@contextlib.contextmanager
def leased(step_dir: Path) -> Iterator[Path]:
    """Hold a read lease on the checkpoint directory ``step_dir`` (see :func:`leased_checkpoint`).

    Raises:
        CheckpointNotFoundError: the checkpoint was deleted before the lease began.
    """
    from kempnerforge.checkpoint.store._lock import read_lease
    from kempnerforge.errors import CheckpointNotFoundError

    with read_lease(step_dir):
        if not step_dir.is_dir():
            raise CheckpointNotFoundError(
                f"{step_dir} was deleted (by a gc) before it could be read; pick another with "
                f"'kf-ckpt ls {step_dir.parent}'"
            )
        yield step_dir


def _follow_latest(path: Path) -> Path:
    """``ROOT/latest`` as the checkpoint it names (when honoured); any other path as it is."""
    if path.name != LATEST_NAME or not path.is_symlink():
        return path
    link = read_latest(path.parent)
    if link.step is None:
        from kempnerforge.errors import CheckpointNotFoundError

        raise CheckpointNotFoundError(
            f"{path}: {link.warning or 'not a usable latest link'}; pass the root "
            f"{path.parent} or a step_<N> dir"
        )
    return path.parent / step_dir_name(link.step)
