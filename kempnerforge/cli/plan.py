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
    SimulatedSave,
    save_steps,
    simulate_run,
)
from kempnerforge.cli._options import config_options, parse_size
from kempnerforge.cli._render import (
    FORMAT_VERSION,
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
    unsaved = sorted(set(pins) - set(save_steps(selection.config, max_steps)))
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
    """``2000..9000 every 1000`` for three or more evenly spaced steps, else the list."""
    if len(steps) >= 3 and len({b - a for a, b in itertools.pairwise(steps)}) == 1:
        return f"{steps[0]}..{steps[-1]} every {steps[1] - steps[0]}"
    if len(steps) > 24:
        return ", ".join([*map(str, steps[:4]), "...", *map(str, steps[-3:])])
    return ", ".join(map(str, steps))


def _save_groups(saves: tuple[SimulatedSave, ...]) -> list[list[SimulatedSave]]:
    """Runs of saves of the same kind and fate; interval runs also of one spacing."""
    groups: list[list[SimulatedSave]] = []
    for save in saves:
        group = groups[-1] if groups else []
        key = (save.milestone, save.pinned, save.survives, save.reason)
        first = group[0] if group else None
        same = first is not None and (
            (first.milestone, first.pinned, first.survives, first.reason) == key
        )
        even = len(group) < 2 or save.step - group[-1].step == group[1].step - group[0].step
        if same and (save.milestone or even):
            group.append(save)
        else:
            groups.append([save])
    return groups


def _kind(save: SimulatedSave) -> str:
    return "milestone" if save.milestone else "pinned" if save.pinned else "interval"


def plan_text(sim: RunSimulation, selection: ConfigSelection) -> str:
    """The ``kf-ckpt plan`` report: summary lines, then the saves grouped into a table."""
    lines = [
        _config_line(selection),
        f"run: {sim.max_steps} steps, {plural(len(sim.saves), 'save')} "
        f"({plural(len(sim.milestones), 'milestone')}), {len(sim.survivors)} left at the end",
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
    if not sim.saves:
        return "\n".join([*lines, "", "the run saves no checkpoint"])
    keep_last_n = selection.config.keep_last_n
    rows = [
        (
            _steps_text([s.step for s in group]),
            len(group),
            _kind(group[0]),
            "kept" if group[0].survives else "deleted",
            reason_text(group[0].reason, keep_last_n),
        )
        for group in _save_groups(sim.saves)
    ]
    table = render_table(rows, ("steps", "saves", "kind", "at end", "why"), "lrlll")
    return "\n".join([*lines, "", table])


def plan_document(sim: RunSimulation, selection: ConfigSelection) -> dict[str, Any]:
    """The ``kf-ckpt plan --json`` document (schema in docs/reference/json.rst)."""
    return {
        "format": "kf-ckpt-plan",
        "format_version": FORMAT_VERSION,
        "config": config_document(selection),
        "max_steps": sim.max_steps,
        "saves": [
            {
                "step": s.step,
                "milestone": s.milestone,
                "pinned": s.pinned,
                "survives": s.survives,
                "reason": str(s.reason),
            }
            for s in sim.saves
        ],
        "save_count": len(sim.saves),
        "milestones": list(sim.milestones),
        "survivors": list(sim.survivors),
        "pins": [s.step for s in sim.saves if s.pinned],
        "max_on_disk": sim.max_on_disk,
        "max_on_disk_step": sim.max_on_disk_step,
        "ckpt_size_bytes": sim.ckpt_size_bytes,
        "peak_disk_bytes": sim.peak_disk_bytes,
    }
