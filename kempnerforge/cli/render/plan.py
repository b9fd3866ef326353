"""The ``kf-ckpt plan`` view of a :class:`~kempnerforge.checkpoint.store.simulate.RunSimulation`:
the report for people and the JSON document."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from kempnerforge.cli.render import (
    config_document,
    human_bytes,
    plural,
    reason_text,
    render_table,
)

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.selection import ConfigSelection
    from kempnerforge.checkpoint.store.simulate import RunSimulation, SaveRun

__all__ = ["PLAN_FORMAT_VERSION", "plan_document", "plan_text"]


def _config_line(selection: ConfigSelection) -> str:
    config, window = selection.config, selection.config.dyn_ckpt_window
    where = {
        "file": f"{selection.source_path}",
        "policy": f"policy recorded in {selection.source_path}",
        "recorded": f"recorded in {selection.source_path}",
    }
    window_text = "no window" if window is None else f"window {window.start}..{window.stop}"
    window_text += "" if window is None else f" {window.strategy}"
    return (
        f"config: {where.get(selection.source, 'defaults')} (interval {config.interval}, "
        f"keep_last_n {config.keep_last_n}, {window_text})"
    )


def _steps_text(steps: list[int]) -> str:
    """The steps of a few listed saves; a long list is cut in the middle."""
    if len(steps) > 24:
        return ", ".join([*map(str, steps[:4]), "...", *map(str, steps[-3:])])
    return ", ".join(map(str, steps))


def _run_text(run: SaveRun) -> str:
    """``2000..9000 every 1000`` for three or more evenly spaced saves, else the steps."""
    if run.every is not None and run.count >= 3:
        return f"{run.first}..{run.last} every {run.every}"
    if run.steps is None:  # one or two evenly spaced saves
        return _steps_text(list(run.iter_steps()))
    if len(run.steps) >= 3 and len({b - a for a, b in itertools.pairwise(run.steps)}) == 1:
        return f"{run.first}..{run.last} every {run.steps[1] - run.steps[0]}"
    return _steps_text(list(run.steps))


def plan_text(sim: RunSimulation, selection: ConfigSelection) -> str:
    """The ``kf-ckpt plan`` report: summary lines, then the saves grouped into a table."""
    lines = [
        _config_line(selection),
        f"run: {sim.max_steps} steps, {plural(sim.save_count, 'save')} "
        f"({plural(len(sim.milestones), 'milestone')}), {sim.survivor_count} left at the end",
    ]
    if sim.max_on_disk_step is not None:
        lines.append(
            f"most on disk at once: {plural(sim.max_on_disk, 'checkpoint')} (first at step "
            f"{sim.max_on_disk_step}, counting the save being written)"
        )
    if sim.ckpt_size_bytes is not None and sim.peak_disk_bytes is not None:
        lines.append(
            f"peak disk use: {human_bytes(sim.peak_disk_bytes)} "
            f"({sim.max_on_disk} x {human_bytes(sim.ckpt_size_bytes)})"
        )
    if not sim.save_count:
        return "\n".join([*lines, "", "the run saves no checkpoint"])
    keep_last_n = selection.config.keep_last_n
    rows = [
        (
            _run_text(run),
            run.count,
            "milestone" if run.milestone else "pinned" if run.pinned else "interval",
            "kept" if run.survives else "deleted",
            reason_text(run.reason, keep_last_n),
        )
        for run in sim.runs
    ]
    table = render_table(rows, ("steps", "saves", "kind", "at end", "why"), "lrlll")
    return "\n".join([*lines, "", table])


PLAN_FORMAT_VERSION = 2
"""Version 2 summarises the saves as runs (``runs``) instead of listing every one."""


def plan_document(sim: RunSimulation, selection: ConfigSelection) -> dict[str, Any]:
    """The ``kf-ckpt plan --json`` document (schema in docs/reference/json.rst).

    Its size is bounded by the milestones, never by the number of saves: the saves are given
    as runs of one kind and fate (``first``, ``last``, ``count``, ``every`` or ``steps``).
    """
    return {
        "format": "kf-ckpt-plan",
        "format_version": PLAN_FORMAT_VERSION,
        "config": config_document(selection),
        "max_steps": sim.max_steps,
        "runs": [
            {
                "first": run.first,
                "last": run.last,
                "count": run.count,
                "every": run.every,
                "steps": None if run.steps is None else list(run.steps),
                "milestone": run.milestone,
                "pinned": run.pinned,
                "survives": run.survives,
                "reason": str(run.reason),
            }
            for run in sim.runs
        ],
        "save_count": sim.save_count,
        "milestones": list(sim.milestones),
        "survivor_count": sim.survivor_count,
        "pins": list(sim.pins),
        "max_on_disk": sim.max_on_disk,
        "max_on_disk_step": sim.max_on_disk_step,
        "ckpt_size_bytes": sim.ckpt_size_bytes,
        "peak_disk_bytes": sim.peak_disk_bytes,
    }
