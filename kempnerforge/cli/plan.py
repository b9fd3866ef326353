"""``kf-ckpt plan``: preview a run's saves, milestones, survivors and peak disk use.

The command and its view of a :class:`~kempnerforge.checkpoint.store.simulate.RunSimulation`;
numbers
become words through the formatting helpers of :mod:`kempnerforge.cli._render`.
"""

from __future__ import annotations

import itertools
from typing import Any

import click

from kempnerforge.checkpoint.store.selection import ConfigSelection, select_root
from kempnerforge.checkpoint.store.simulate import (
    RunSimulation,
    SaveRun,
    is_saved,
    simulate_run,
)
from kempnerforge.cli._options import config_options, parse_size
from kempnerforge.cli._render import (
    config_document,
    echo_json,
    human_bytes,
    plural,
    reason_text,
    render_table,
)

__all__ = ["plan", "plan_document", "plan_text"]


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_size(value)


def _pins(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        steps = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of steps like 1000,5000") from None
    if not steps or any(step < 0 for step in steps):
        raise click.BadParameter(f"{value!r} is not a list of steps like 1000,5000")
    return tuple(sorted(set(steps)))


@click.command("plan")
@config_options
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    required=True,
    metavar="N",
    help="Number of training steps of the run.",
)
@click.option(
    "--ckpt-size",
    callback=_size,
    metavar="SIZE",
    help="Size of one checkpoint (e.g. 26GB, 512MiB), to compute the peak disk use.",
)
@click.option(
    "--pins",
    callback=_pins,
    metavar="N,M,...",
    help="Steps to forecast as pinned ('kf-ckpt pin' right after they are saved): kept to the "
    "end, outside keep_last_n.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def plan(
    config_path: str | None,
    overrides: tuple[str, ...],
    max_steps: int,
    ckpt_size: int | None,
    pins: tuple[int, ...],
    as_json: bool,
) -> None:
    """Preview a run before it starts: the steps it saves, which are milestones, which survive
    retention, and the most checkpoints (and bytes, with --ckpt-size) on disk at once, to size a
    quota.

    The run saves at the steps 1..N where the config's interval and dynamic window say so, and
    retention is replayed after each save with the rules that training and 'kf-ckpt gc' apply.
    The peak counts the save being written (in async mode, in flight) next to the kept ones.
    The config is the job file (--config), else the policy recorded by 'kf-ckpt mark' in
    checkpoint.dir, else the one recorded in the newest checkpoint there, else the defaults;
    --set overrides apply on top.

    Example: kf-ckpt plan -c job.toml --max-steps 100000 --ckpt-size 26GB
    """
    _, selection = select_root(None, config_path, overrides)
    unsaved = [step for step in pins if not is_saved(selection.config, max_steps, step)]
    if unsaved:
        raise click.BadParameter(
            f"the run never saves step {', '.join(map(str, unsaved))}, so it cannot be pinned; "
            "pin steps that the interval or the window saves",
            param_hint="'--pins'",
        )
    sim = simulate_run(selection.config, max_steps, ckpt_size_bytes=ckpt_size, pins=pins)
    if as_json:
        echo_json(plan_document(sim, selection))
    else:
        click.echo(plan_text(sim, selection))


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
