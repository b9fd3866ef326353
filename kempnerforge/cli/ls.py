"""``kf-ckpt ls``: the checkpoints on disk and what gc would do with each (no torch import)."""

from __future__ import annotations

import click

from kempnerforge.checkpoint.catalog import scan
from kempnerforge.checkpoint.retention import plan_retention
from kempnerforge.cli._options import config_options, select_root
from kempnerforge.cli._render import (
    catalog_warnings,
    echo_json,
    echo_warnings,
    ls_document,
    ls_table,
    now_s,
)

__all__ = ["ls"]


@click.command("ls")
@click.argument("directory", metavar="[DIR]", required=False)
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def ls(
    directory: str | None, config_path: str | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """List the checkpoints under DIR, oldest first: step, status (complete, incomplete,
    in-flight), size, tokens seen, age, marks (latest, milestone), and what gc would do with it
    and why. The footer gives the count, the total size and what gc would free.

    DIR defaults to checkpoint.dir of the config: the job file (--config), else the config
    recorded in the newest checkpoint, else the defaults; --set overrides apply on top. Entries
    that are not checkpoints, and unreadable files, are reported on stderr.

    Example: kf-ckpt ls runs/llama/checkpoints --json
    """
    root, selection = select_root(directory, config_path, overrides)
    catalog = scan(root)
    plan = plan_retention(catalog, selection.config)
    echo_warnings(catalog_warnings(catalog))
    if as_json:
        echo_json(ls_document(catalog, plan, selection))
    else:
        click.echo(ls_table(catalog, plan, selection, now_s=now_s()))
