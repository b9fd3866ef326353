"""One exception hierarchy for the toolkit, each class carrying the CLI exit code it maps to.

The command line maps errors to exit codes in exactly one place (``kempnerforge.cli``) by reading
``exit_code``; library callers catch the specific classes. Messages say what went wrong, where,
and what to do next.
"""

from __future__ import annotations

import os
from enum import StrEnum

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointRootError",
    "CheckpointSaveError",
    "ConfigError",
    "CorruptCheckpointError",
    "ExportError",
    "KempnerForgeError",
    "LockBusyError",
    "MissingExtraError",
    "OutputExistsError",
    "RetentionError",
    "SupersededError",
    "UnsafeOutputError",
    "VerifyError",
    "describe_os_error",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCK_BUSY = 75  # EX_TEMPFAIL: cron should retry later.


def describe_os_error(exc: OSError) -> str:
    """``cannot write out/model.safetensors: No space left on device (ENOSPC)``: an OS error as
    one line naming the path(s), the reason and the errno name."""
    import errno

    name = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in paths)
    return f"{where + ': ' if where else ''}{reason}{f' ({name})' if name else ''}"


class Remedy(StrEnum):
    """What the caller can do about an error, named without naming a command-line flag.

    Library messages reach training logs, where ``--force`` means nothing; the CLI turns a
    remedy into the flag that applies (``kempnerforge.cli.render.REMEDY_HINTS``).
    """

    force = "force"
    """Replace the existing output (``force=True``)."""
    wait_lock = "wait_lock"
    """Wait for the root's lock instead of giving up at once (``wait_lock_s``)."""
    config_file = "config_file"
    """Give the run's job file instead of the config recorded in its checkpoints."""
    drop_step = "drop_step"
    """Name the root (with the step), or the checkpoint directory without a step."""


class KempnerForgeError(Exception):
    """Base class of every error the toolkit raises on purpose. Exit code 1.

    Args:
        remedy: what the caller can do about it, when that is one of the :class:`Remedy` cases.
    """

    exit_code: int = EXIT_FAILED

    def __init__(self, *args: object, remedy: Remedy | None = None) -> None:
        super().__init__(*args)
        self.remedy = remedy


class ConfigError(KempnerForgeError, ValueError):
    """A config file, key or value is wrong. Exit code 2."""

    exit_code = EXIT_USAGE


class CheckpointRootError(KempnerForgeError, FileNotFoundError):
    """The checkpoint root is missing or is not a directory. Exit code 2."""

    exit_code = EXIT_USAGE


class CheckpointNotFoundError(KempnerForgeError, FileNotFoundError):
    """No checkpoint matches what was asked for (a step, a path). Exit code 2."""

    exit_code = EXIT_USAGE


class CorruptCheckpointError(KempnerForgeError):
    """A checkpoint is incomplete or its files cannot be read. Exit code 1."""


class LockBusyError(KempnerForgeError):
    """Another process holds the checkpoint root's lock. Exit code 75 (retry later)."""

    exit_code = EXIT_LOCK_BUSY


class RetentionError(KempnerForgeError):
    """Applying a retention plan failed for at least one checkpoint. Exit code 1."""


class OutputExistsError(KempnerForgeError, FileExistsError):
    """An output path exists and overwriting it was not asked for. Exit code 2."""

    exit_code = EXIT_USAGE


class UnsafeOutputError(KempnerForgeError, ValueError):
    """An output path lies inside what a checkpoint root manages (a step dir, the trash, the
    lock). Exit code 2."""

    exit_code = EXIT_USAGE


class ExportError(KempnerForgeError):
    """An export could not be completed; no partial output is left behind. Exit code 1."""


class VerifyError(ExportError):
    """An exported file does not match the checkpoint it came from. Exit code 1."""


class CheckpointSaveError(KempnerForgeError):
    """A save, or its background flush, failed; ``latest`` still names the previous one. Exit 1."""


class MissingExtraError(KempnerForgeError, ImportError):
    """An optional dependency is not installed (the message gives the pip line). Exit code 2."""

    exit_code = EXIT_USAGE


class SupersededError(CheckpointSaveError):
    """Another job took over the checkpoint root: this one may no longer publish. Exit 1.

    Raised by a save whose manager's owner token was superseded (a requeued job resumed on the
    root while this one still ran); nothing was published and ``latest`` was not moved.
    """
