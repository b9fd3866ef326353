"""Metrics recorded with a save: ``"metrics"`` in metadata.json, name -> number (torch-free).

Training code passes them to :meth:`CheckpointManager.save(..., metrics=...)
<kempnerforge.checkpoint.manager.CheckpointManager.save>` so that people can find the checkpoint
they mean (``kf-ckpt ls --metric eval_loss --sort metric:eval_loss``). The writer is strict:
:func:`checked_metrics` refuses anything but a flat mapping of names to real numbers, and stores
a non-finite value (a diverged loss) as ``null``, since JSON has no NaN. The reader is lenient:
:func:`recorded_metrics` keeps what is well formed and warns about the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_METRICS", "checked_metrics", "recorded_metrics"]

MAX_METRICS = 256
"""More metrics than this in one save are refused (metadata.json stays small)."""
_MAX_NAME_CHARS = 200


def checked_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | int | None]:
    """``metrics`` as recorded in metadata.json: names to numbers, non-finite values as None.

    Raises:
        TypeError: ``metrics`` is not a mapping, a name is not a string, or a value is not a
            real number (a bool, a string, a tensor, a nested dict).
        ValueError: a name is empty or too long, or there are too many metrics.

    Example:
        >>> checked_metrics({"eval_loss": 2.31, "lr": 3e-4, "grad_norm": float("inf")})
        {'eval_loss': 2.31, 'lr': 0.0003, 'grad_norm': None}
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of names to numbers, got {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"metrics holds {len(metrics)} entries; at most {MAX_METRICS} are kept")
    checked: dict[str, float | int | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, got {name!r}")
        if not name or len(name) > _MAX_NAME_CHARS:
            raise ValueError(f"metric name {name[:40]!r} must be 1 to {_MAX_NAME_CHARS} characters")
        checked[name] = _number(name, value)
    return checked


def _number(name: str, value: Any) -> float | int | None:
    # bool is an int subclass but not a measurement; a 0-d tensor or NumPy scalar is refused
    # too: call .item() (a tensor here would keep the device's memory and sync the stream).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"metric {name!r} must be a real number (int or float), got {value!r} "
            f"({type(value).__name__}); pass float(value), or .item() for a tensor"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if type(value) in (int, float) else float(value)


def recorded_metrics(data: Mapping[str, Any], warnings: list[str]) -> dict[str, float | int | None]:
    """The well-formed metrics a metadata.json document records; the rest becomes a warning."""
    value = data.get("metrics")
    if value is None:
        return {}
    if not isinstance(value, dict):
        warnings.append(f"metadata.json metrics is not a table: {type(value).__name__}; ignored")
        return {}
    metrics: dict[str, float | int | None] = {}
    dropped: list[str] = []
    for name, number in value.items():
        ok = number is None or (
            isinstance(number, int | float)
            and not isinstance(number, bool)
            and math.isfinite(number)
        )
        if ok and len(metrics) < MAX_METRICS:
            metrics[name] = number
        else:
            dropped.append(name)
    if dropped:
        shown = ", ".join(repr(n) for n in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        warnings.append(f"metadata.json metrics {shown} are not numbers; ignored")
    return metrics
