"""One line that says why a DCP operation failed, for error messages and training logs.

DCP wraps what went wrong on each rank in a ``CheckpointException`` whose ``str()`` is a
multi-line dump of every rank's traceback: unreadable in a one-line error. The manager (a failed
save or flush) and export (a failed read) both summarise it here.
"""

from __future__ import annotations

__all__ = ["describe_failure"]


def describe_failure(exc: BaseException) -> str:
    """``rank 0: EOFError: Ran out of input; rank 1: ...``, or ``Type: message`` for others.

    Only the first line of each rank's message is kept. Duck-typed on ``failures`` (a dict of
    rank to exception, or to an ``(exception, traceback)`` pair) so that no torch import is
    needed to describe an ordinary exception.
    """
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        return "; ".join(
            f"rank {rank}: {_one_line(wrapped[0] if isinstance(wrapped, tuple) else wrapped)}"
            for rank, wrapped in sorted(failures.items())
        )
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
