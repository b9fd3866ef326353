"""``kf-ckpt pin`` and ``kf-ckpt unpin``: keep one checkpoint whatever retention says (no torch).

Both are thin shells over :mod:`kempnerforge.checkpoint.store.pins`, which takes the root's lock,
rendered with :mod:`kempnerforge.cli.render.pin`.
"""

from __future__ import annotations

from pathlib import Path

import click

from kempnerforge.checkpoint.store.pins import MAX_NOTE_CHARS, pin_checkpoint, unpin_checkpoint
from kempnerforge.checkpoint.store.resolve import split_checkpoint_path
from kempnerforge.cli._options import step_option, wait_lock_option
from kempnerforge.cli.render.pin import pin_text, unpin_text

__all__ = ["pin", "unpin"]


def _step_option(fn):  # type: ignore[no-untyped-def]
    return step_option("The checkpoint's step, when SRC is the checkpoint root.")(fn)


def _target(src: str, step: int | None) -> tuple[Path, int]:
    """The root and step that SRC (and --step) name."""
    root, own = split_checkpoint_path(src)
    if own is None:
        if step is None:
            raise click.UsageError(
                f"{src} is not a step_<N> checkpoint directory; pass one, or pass the "
                "checkpoint root with --step N"
            )
        return root, step
    if step is not None and step != own:
        raise click.UsageError(
            f"{src} is the checkpoint of step {own}, not {step}; drop --step or pass the root"
        )
    return root, own


def _note(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and len(" ".join(value.split())) > MAX_NOTE_CHARS:
        raise click.BadParameter(f"a note holds at most {MAX_NOTE_CHARS} characters")
    return value


@click.command("pin")
@click.argument("src", metavar="SRC")
@_step_option
@click.option(
    "--note",
    default=None,
    callback=_note,
    metavar="TEXT",
    help="Why it is kept, shown by 'kf-ckpt ls' (default: keep the note of an existing pin).",
)
@wait_lock_option
def pin(src: str, step: int | None, note: str | None, wait_lock: float) -> None:
    """Pin a checkpoint: retention (kf-ckpt gc, and training's own after each save) keeps it
    whatever its age, without using a keep_last_n slot.

    SRC is a checkpoint directory (runs/a/step_1500), or the checkpoint root with --step.
    Pinning writes pinned.json (note, time, user, host) into the checkpoint directory under the
    root's lock, so a concurrent gc never deletes it between the check and the pin. Pinning a
    pinned checkpoint updates its note. Only a complete checkpoint can be pinned. Exit codes:
    0 pinned, 2 no such checkpoint or an incomplete one, 75 lock still busy after --wait-lock.

    Example: kf-ckpt pin runs/llama/checkpoints --step 1500 --note "best eval loss 2.31"
    """
    root, target = _target(src, step)
    click.echo(pin_text(pin_checkpoint(root, target, note=note, wait_lock_s=wait_lock)))


@click.command("unpin")
@click.argument("src", metavar="SRC")
@_step_option
@wait_lock_option
def unpin(src: str, step: int | None, wait_lock: float) -> None:
    """Remove the pin of a checkpoint: retention treats it as any other again, so the next gc
    may delete it.

    SRC is a checkpoint directory, or the checkpoint root with --step. A checkpoint that is not
    pinned is left as it is (exit 0). Takes the root's lock, as pin does. Exit codes: 0 done
    (also nothing to do), 2 no such checkpoint, 75 lock still busy after --wait-lock.

    Example: kf-ckpt unpin runs/llama/checkpoints --step 1500
    """
    root, target = _target(src, step)
    click.echo(unpin_text(unpin_checkpoint(root, target, wait_lock_s=wait_lock)))
