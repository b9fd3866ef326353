"""``kf-ckpt plan``: preview a run's saves, milestones, survivors and peak disk use (no torch).

Thin: parse, select the config, call
:func:`kempnerforge.checkpoint.store.simulate.simulate_run`, render with
:mod:`kempnerforge.cli.render.plan`.
"""

from __future__ import annotations

import click

from kempnerforge.checkpoint.store.selection import select_root
from kempnerforge.checkpoint.store.simulate import is_saved, simulate_run
from kempnerforge.cli._options import config_options, parse_size
from kempnerforge.cli.render import echo_json
from kempnerforge.cli.render.plan import plan_document, plan_text

__all__ = ["plan"]


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
