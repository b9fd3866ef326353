"""``kf-ckpt export``: stream a checkpoint's model weights into safetensors.

Thin: parse the options, pick the config (for the default dtype), call
:func:`kempnerforge.checkpoint.export.exporter.export_safetensors`, render its summary. torch is
imported
only when the command runs, so that ``kf-ckpt --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kempnerforge.cli._options import config_options, parse_size, selection_options, step_option
from kempnerforge.cli._render import human_bytes
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
    with contextlib.ExitStack() as stack:
        result = export_safetensors(
            step_dir,
            output,
            dtype=dtype or selection.config.export_dtype,
            max_shard_size=max_shard_size,
            force=force,
            verify=verify,
            progress=_progress_bar(stack) if sys.stderr.isatty() else None,
            include=include,
            exclude=exclude,
        )
    for note in result.notes:
        click.echo(f"kf-ckpt: note: {note}", err=True)
    files = "1 file" if len(result.files) == 1 else f"{len(result.files)} files"
    click.echo(
        f"exported {result.tensors} tensors ({human_bytes(result.size_bytes)}, {result.dtype}) "
        f"of {_which(result.step, result.step_dir)} to {result.output} in {files}, "
        f"{result.elapsed_s:.1f} s" + ("; verified" if result.verified else ""),
        err=True,
    )


def _which(step: int | None, step_dir: Path) -> str:
    return f"step {step}" if step is not None else str(step_dir)


def _progress_bar(stack: contextlib.ExitStack) -> Callable[[int, int], None]:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a bar on stderr."""
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = stack.enter_context(
                click.progressbar(length=total, label="exporting", file=sys.stderr, show_pos=False)
            )
        bar.update(done - bar.pos)

    return progress
