"""Entry point of ``kf-ckpt``.

Subcommands live in their own modules and are imported only when they run, so that
``kf-ckpt --help`` and the torch-free commands start fast. Library errors are mapped to exit
codes here, and only here.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from kempnerforge import __version__
from kempnerforge.cli._text import escape
from kempnerforge.errors import EXIT_FAILED, KempnerForgeError, describe_os_error

__all__ = ["COMMANDS", "cli", "main"]

# name -> (module, attribute, one-line help shown by `kf-ckpt --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ls": ("kempnerforge.cli.ls", "ls", "List checkpoints and what gc would do with each."),
    "gc": ("kempnerforge.cli.collect", "gc", "Delete checkpoints that retention no longer keeps."),
    "plan": ("kempnerforge.cli.plan", "plan", "Preview a run's saves, milestones and disk use."),
    "pin": ("kempnerforge.cli.pin", "pin", "Keep a checkpoint whatever retention says."),
    "unpin": ("kempnerforge.cli.pin", "unpin", "Remove a checkpoint's pin."),
    "mark": ("kempnerforge.cli.mark", "mark", "Record an existing root's milestones and policy."),
    "show": ("kempnerforge.cli.show", "show", "List a checkpoint's tensors from its metadata."),
    "export": ("kempnerforge.cli.export", "export", "Export model weights as safetensors."),
    "stats": ("kempnerforge.cli.stats", "stats", "Per-tensor statistics of a checkpoint."),
    "diff": ("kempnerforge.cli.diff", "diff", "How far the weights moved between checkpoints."),
    "trace": (
        "kempnerforge.cli.weight_trace",
        "trace",
        "Weight norms and changes across checkpoints.",
    ),
}


class _LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command: click.Command = getattr(module, spec[1])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[2]) for name, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KempnerForgeError as exc:
            from kempnerforge.cli.render import error_text  # not on the --help path

            click.echo(f"kf-ckpt: error: {escape(error_text(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            # An OS error no library call turned into a message of its own (a full disk, a
            # read-only or unreadable directory, a path over the OS limit): name the path and
            # the reason, never a traceback.
            click.echo(f"kf-ckpt: error: {escape(describe_os_error(exc))}", err=True)
            ctx.exit(EXIT_FAILED)
        except RecursionError:
            click.echo("kf-ckpt: error: input nested too deep to process", err=True)
            ctx.exit(EXIT_FAILED)
        except MemoryError:
            click.echo("kf-ckpt: error: out of memory", err=True)
            ctx.exit(EXIT_FAILED)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="kf-ckpt")
def cli() -> None:
    """List, garbage-collect and export KempnerForge checkpoints.

    Exit codes: 0 success (also "nothing to do"); 1 the operation failed; 2 usage or
    configuration error; 75 the checkpoint root's lock is busy (retry later).
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kf-ckpt")
