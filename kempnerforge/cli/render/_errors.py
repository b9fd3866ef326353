"""Library errors as the CLI prints them: the message, then the command-line form of its remedy.

A library message names no flag (it reaches training logs, where ``--force`` means nothing);
the error carries a :class:`~kempnerforge.errors.Remedy` and this module names the flag.
"""

from __future__ import annotations

from kempnerforge.errors import KempnerForgeError, Remedy

__all__ = ["REMEDY_HINTS", "error_text"]

REMEDY_HINTS: dict[Remedy, str] = {
    Remedy.force: "; pass --force to replace it",
    Remedy.wait_lock: ", or wait for it with --wait-lock SECONDS",
    Remedy.config_file: "; pass the run's job file with --config",
    Remedy.drop_step: "; drop --step or pass the root",
}
"""The command-line form of each remedy a library error names (its message names no flag)."""


def error_text(exc: KempnerForgeError) -> str:
    """A library error as the CLI prints it: the message, then the flag that helps, if any."""
    return str(exc) + (REMEDY_HINTS[exc.remedy] if exc.remedy is not None else "")
