"""What a walk of a step directory and its metadata.json say about the checkpoint.

:func:`checkpoint_facts` judges completeness (markers, pipeline stages, an empty ``.metadata``)
from a :class:`~kempnerforge.checkpoint.store._walk.StepWalk`, reads the fields the toolkit
records in metadata.json leniently (a mistyped value is ignored with a warning) and the pin,
and returns a :class:`~kempnerforge.checkpoint.store.records.CheckpointFacts`. The full scan
feeds it a walk; the light scan (:mod:`kempnerforge.checkpoint.store._light_scan`) a probe.
"""

from __future__ import annotations

import functools
from typing import Any

from kempnerforge.checkpoint.store._walk import StepWalk
from kempnerforge.checkpoint.store.layout import DCP_METADATA, Completeness, assess_complete
from kempnerforge.checkpoint.store.metrics import recorded_metrics
from kempnerforge.checkpoint.store.pins import read_pin
from kempnerforge.checkpoint.store.recorded import (
    MetadataRead,
    json_int,
    pp_stages_of,
    read_metadata_json,
)
from kempnerforge.checkpoint.store.records import CheckpointFacts

__all__ = ["checkpoint_facts"]


def checkpoint_facts(
    root_fd: int,
    name: str,
    step: int,
    walk: StepWalk,
    *,
    meta: MetadataRead | None = None,
    size_known: bool = True,
) -> CheckpointFacts:
    """What ``walk`` found in step directory ``name`` of the root open as ``root_fd``, plus its
    metadata.json (read here unless the caller already read it as ``meta``) and its pin.

    ``size_known``: False when ``walk`` is a probe that did not list the files (the light scan).
    """
    if meta is None:
        meta = read_metadata_json(name, dir_fd=root_fd)
    data = meta.data or {}
    # A save writes metadata.json early but not first: its absence in an unfinished save is
    # normal, and warning about it on every cron run would only be noise.
    quiet = meta.data is None and not walk.has_dcp_metadata and not walk.stages and meta.missing
    warnings = [*walk.warnings, *([meta.warning] if meta.warning and not quiet else [])]
    unreadable = [f"pp{k}/" for k, ok in sorted(walk.stages.items()) if ok is None]
    scan_error = None
    if not walk.listed or unreadable:
        scan_error = "cannot read " + (", ".join(unreadable) if walk.listed else f"{name}/")
    pin, pin_warning = read_pin(name, dir_fd=root_fd) if walk.has_pin else (None, None)
    if pin_warning:
        warnings.append(pin_warning)
    pp_stages = pp_stages_of(data)
    if walk.stages or pp_stages is not None:
        status = assess_complete(
            has_dcp_metadata=walk.has_dcp_metadata,
            stages={k: bool(ok) for k, ok in walk.stages.items()},
            pp_stages=pp_stages,
        )
    else:
        status = _single_stage_status(walk.has_dcp_metadata)
    complete = status.complete and scan_error is None
    reason = scan_error or status.reason
    corrupt = complete and bool(walk.empty_markers)
    if corrupt:
        where = ", ".join(m for m in walk.empty_markers if m != "./")
        complete = False
        reason = f"DCP {DCP_METADATA} is empty (0 bytes)" + (f" in {where}" if where else "")
    # Read before the warnings are collected: each appends its own.
    tokens_seen = _recorded_int(data, "tokens_seen", warnings)
    milestone = _recorded_flag(data, warnings)
    config = _recorded_config(data, warnings)
    metrics = recorded_metrics(data, warnings)
    return CheckpointFacts(
        complete=complete,
        incomplete_reason=reason,
        tokens_seen=tokens_seen,
        dynamic_milestone=milestone,
        recorded_config=config,
        size_bytes=walk.size_bytes,
        file_count=walk.file_count,
        mtime_s=walk.mtime_s,
        warnings=tuple(warnings + _step_mismatch(data, step)),
        scan_error=scan_error,
        metrics=metrics,
        pin=pin,
        size_known=size_known,
        corrupt=corrupt,
        verified=False,
        run_id=_recorded_str(data, "run_id"),
    )


@functools.cache
def _single_stage_status(has_dcp_metadata: bool) -> Completeness:
    """``assess_complete`` of a checkpoint without pipeline stages: one of two answers, made
    once rather than once per checkpoint of a cold scan."""
    return assess_complete(has_dcp_metadata=has_dcp_metadata, stages={})


def _recorded_int(data: dict[str, Any], key: str, warnings: list[str]) -> int | None:
    value = data.get(key)
    if value is None or json_int(value):
        return value
    warnings.append(f"metadata.json {key} is not an integer: {value!r}; ignored")
    return None


def _recorded_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _recorded_flag(data: dict[str, Any], warnings: list[str]) -> bool:
    value = data.get("dynamic_milestone", False)
    if isinstance(value, bool):
        return value
    warnings.append(f"metadata.json dynamic_milestone is not true/false: {value!r}; ignored")
    return False


def _recorded_config(data: dict[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    value = data.get("checkpoint")
    if value is None or isinstance(value, dict):
        return value
    warnings.append(f"metadata.json checkpoint is not a table: {value!r}; ignored")
    return None


def _step_mismatch(data: dict[str, Any], step: int) -> list[str]:
    recorded = data.get("step")
    if recorded is None or recorded == step:
        return []
    return [f"metadata.json records step {recorded!r}, the directory is step {step}"]
