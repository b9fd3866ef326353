"""``kf-ckpt export``: stream a checkpoint's model weights into safetensors.

Thin: parse the options, pick the config (for the default dtype), call
:func:`kempnerforge.checkpoint.export.exporter.export_safetensors`, render its summary with
:mod:`kempnerforge.cli.render.export`. torch is imported only when the command runs, so that
``kf-ckpt --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from kempnerforge.cli._options import config_options, parse_size, selection_options, step_option
from kempnerforge.cli.render import echo_notes, progress_bar
from kempnerforge.cli.render.export import export_summary
from kempnerforge.config.checkpoint import EXPORT_DTYPES

__all__ = ["export"]


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    return parse_size(value)


@click.command()
@click.argument("src", required=False, type=click.Path(path_type=str))
@config_options
@step_option()
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="A file ending in .safetensors, or a directory (Hugging Face layout).",
)
@click.option(
    "--dtype",
    type=click.Choice(EXPORT_DTYPES),
    default=None,
    help="Dtype of floating tensors (default: the config's checkpoint.export_dtype).",
)
@click.option(
    "--max-shard-size",
    default="5GB",
    show_default=True,
    callback=_size,
    metavar="SIZE",
    help="Split a directory output into shards of at most this size (5GB, 500MB, 2GiB).",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing output (once the new one is complete)."
)
@selection_options
@click.option("--verify", is_flag=True, help="Read the output back and compare every tensor.")
def export(
    src: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    step: int | None,
    output: Path,
    dtype: str | None,
    max_shard_size: int,
    force: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    verify: bool,
) -> None:
    """Export the model weights of a checkpoint as safetensors.

    SRC is a checkpoint root (default: checkpoint.dir of the config) or one checkpoint
    directory: any directory holding a DCP .metadata, whatever its name and whoever wrote it
    (a renamed copy, torchtitan's step-N, a plain dcp.save). Only the model part is read, in
    bounded batches; the optimizer state is never loaded. The model part is the 'model' group
    when there is one, else every tensor outside the optimizer, optim, lr_scheduler, scheduler,
    dataloader, train_state, rng and extra groups; --include/--exclude override it. Floating
    tensors are cast to --dtype; integer and bool tensors keep theirs.
    """
    from kempnerforge.checkpoint.export.exporter import export_safetensors
    from kempnerforge.checkpoint.store.selection import select_checkpoint

    step_dir, selection = select_checkpoint(src, config_path, overrides, step)
    with progress_bar("exporting") as progress:
        result = export_safetensors(
            step_dir,
            output,
            dtype=dtype or selection.config.export_dtype,
            max_shard_size=max_shard_size,
            force=force,
            verify=verify,
            progress=progress,
            include=include,
            exclude=exclude,
        )
    echo_notes(result.notes)
    click.echo(export_summary(result), err=True)
