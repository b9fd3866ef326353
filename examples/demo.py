"""``make demo``: the whole checkpoint toolkit on a tiny training run, one explained step at a time.

1. train ``examples/train.py`` without interruption, as the reference;
2. train again and kill the process with SIGKILL part-way, as a preemption would;
3. resume, and check that every resumed loss equals the reference run's bit for bit;
4. look at the checkpoints and free space with ``kf-ckpt ls``, ``gc --dry-run`` and ``gc``;
5. size a long run with ``kf-ckpt plan``;
6. export the weights with ``kf-ckpt export``, and load them back into a model;
7. study how the weights moved over the kept checkpoints with ``kf-ckpt trace``, and draw it.

Everything is written under ``--out`` (default ``demo-output/``, git-ignored). Running the demo
again replaces what an earlier demo wrote there, and refuses to touch a directory it did not
create.

Example:
    python examples/demo.py --out demo-output
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import TextIO

try:
    from kempnerforge.config import load_config
except ImportError:  # run with an interpreter that lacks the package
    sys.exit(f"{sys.executable} cannot import kempnerforge; run 'make demo' (it installs it first)")

HERE = Path(__file__).resolve().parent
JOB = HERE / "job.toml"
MARKER = ".kempnerforge-demo"
SUBDIRS = ("reference", "run", "export", "losses")
FIGURE = "trace.png"


class DemoError(Exception):
    """A demo step failed; the message says which and what to look at."""


def say(text: str) -> None:
    print(textwrap.fill(text, width=96), flush=True)


def heading(number: int, title: str, explanation: str) -> None:
    print(f"\n== {number}. {title} " + "=" * max(0, 88 - len(title)), flush=True)
    say(explanation)


def indent(text: str) -> str:
    return textwrap.indent(text.rstrip("\n"), "    ") if text.strip() else ""


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, for readable commands."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def prepare_out(out: Path) -> None:
    """Create ``out``, clearing an earlier demo's output (never a directory it did not make)."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a directory; pick another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DemoError(
                f"--out {out} is not empty and was not written by the demo; pick another --out "
                "(the demo only ever clears its own output)"
            )
        for name in (*SUBDIRS, FIGURE):
            target = out / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by examples/demo.py; safe to delete\n")
    (out / "losses").mkdir()


def kf_ckpt_path() -> Path:
    """The ``kf-ckpt`` script installed next to this interpreter (the same virtual env)."""
    script = Path(sys.executable).parent / "kf-ckpt"
    if not os.access(script, os.X_OK):
        raise DemoError(
            f"{script} not found; install the package into this environment first "
            "('make install', or 'pip install -e .')"
        )
    return script


def train_argv(out: Path, name: str, args: argparse.Namespace, kill_at: int | None) -> list[str]:
    losses = out / "losses" / f"{name}{'-killed' if kill_at else ''}.jsonl"
    argv = ["--config", str(JOB), "--set", f"checkpoint.dir={shown(out / name)}"]
    argv += ["--steps", str(args.steps), "--losses", str(losses)]
    for override in args.overrides:
        argv += ["--set", override]
    if kill_at is not None:
        argv += ["--kill-at", str(kill_at)]
    return argv


def train(
    out: Path,
    name: str,
    args: argparse.Namespace,
    *,
    kill_at: int | None = None,
    in_process: bool = False,
) -> int:
    """Run examples/train.py, streaming its output indented; return its exit status.

    In a child process by default (a crash must not take the demo down); ``in_process`` runs the
    same ``main`` here instead, which saves a second start of torch for the reference run.
    """
    print(
        f"$ python examples/train.py --set checkpoint.dir={shown(out / name)}"
        + (f" --kill-at {kill_at}" if kill_at else "")
        + ("    # same code, run inside the demo's process" if in_process else ""),
        flush=True,
    )
    argv = train_argv(out, name, args, kill_at)
    if in_process:
        example = import_train_example()
        try:
            with contextlib.redirect_stdout(Indented(sys.stdout)):
                example.main(argv)
        except Exception as exc:  # the same failure a child process would report by its status
            print(f"    {type(exc).__name__}: {exc}", flush=True)
            return 1
        return 0
    cmd = [sys.executable, "-u", str(HERE / "train.py"), *argv]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print("    " + line.rstrip("\n"), flush=True)
    return proc.returncode


class Indented(io.TextIOBase):
    """A text stream that indents every line written through it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write("    ")
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def import_train_example() -> ModuleType:
    """``examples/train.py`` as a module (it is a script, not part of the package)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import train as example

    return example


def kf_ckpt(*argv: str, expect: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kf-ckpt`` and show its stdout and (marked) stderr."""
    print("$ kf-ckpt " + " ".join(shlex.quote(a) for a in argv), flush=True)
    done = subprocess.run(
        [str(kf_ckpt_path()), *argv], capture_output=True, text=True, check=False, timeout=600
    )
    if done.stdout.strip():
        print(indent(done.stdout), flush=True)
    if done.stderr.strip():
        print(indent("\n".join(f"[stderr] {line}" for line in done.stderr.splitlines())))
    if done.returncode not in expect:
        raise DemoError(f"kf-ckpt {argv[0]} exited with {done.returncode}; see its output above")
    return done


def describe_crash(root: Path) -> None:
    """Say what the killed run left on disk, from the layout module's own reading of it."""
    from kempnerforge.checkpoint.store.files import read_latest
    from kempnerforge.checkpoint.store.layout import check_complete, list_step_dirs

    latest = read_latest(root).step
    if latest is None:
        say("The crash came before any checkpoint was published: the resume starts from step 0.")
        return
    newer = [(s, check_complete(p).complete) for s, p in list_step_dirs(root) if s > latest]
    text = (
        f"What the crash left: `latest` -> step_{latest}, the newest checkpoint known to be "
        "complete (an async save is published as soon as its background write has finished)."
    )
    for step, complete in newer:
        state = "finished writing" if complete else "was still being written"
        text += (
            f" step_{step} {state} in the background but was never published, so the resume "
            "ignores it and saves that step again."
        )
    say(text)


def read_losses(path: Path) -> dict[int, float]:
    if not path.is_file():
        return {}
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def compare_losses(out: Path) -> int:
    """Check the resumed run against the reference, bit for bit. Returns the resume step."""
    reference = read_losses(out / "losses" / "reference.jsonl")
    resumed = read_losses(out / "losses" / "run.jsonl")
    if not resumed:
        raise DemoError("the resumed run logged no step; see its output above")
    first = min(resumed)
    rows = [(s, reference.get(s), resumed[s]) for s in sorted(resumed)]
    equal = sum(ref == loss for _, ref, loss in rows)
    say(f"The resumed run picked up after step {first - 1} and trained {first}..{max(resumed)}.")
    shown_rows = rows if len(rows) <= 6 else [*rows[:3], None, *rows[-3:]]
    print("    step  uninterrupted run    resumed run        equal")
    for row in shown_rows:
        if row is None:
            print("    ...")
            continue
        step, ref, loss = row
        print(f"    {step:4d}  {ref!r:<18} {loss!r:<18} {'yes' if ref == loss else 'NO'}")
    if equal != len(rows):
        raise DemoError(
            f"only {equal} of {len(rows)} resumed losses equal the uninterrupted run's; "
            "the resume did not restore the full training state"
        )
    say(
        f"All {equal} resumed losses are bit-for-bit equal to the uninterrupted run's: model, "
        "AdamW moments, scheduler, data position and RNG (dropout) were all restored."
    )
    return first - 1


def check_export(out: Path, args: argparse.Namespace) -> None:
    """Load the exported safetensors next to the checkpoint's own weights and compare."""
    import torch
    from safetensors.torch import load_file

    from kempnerforge.checkpoint.manager import CheckpointManager

    example = import_train_example()

    config = load_config(JOB, [f"checkpoint.dir={out / 'run'}", *args.overrides])
    model, optimizer, _, _ = example.build(seed=0, steps=args.steps)
    step, _, _ = CheckpointManager(config, model, optimizer).load()
    exported = load_file(out / "export" / "model.safetensors")
    weights = model.state_dict()
    if set(exported) != set(weights):
        raise DemoError(f"exported names {sorted(exported)} differ from {sorted(weights)}")
    same = [n for n, t in weights.items() if torch.equal(exported[n], t.to(exported[n].dtype))]
    dtype = next(iter(exported.values())).dtype
    say(
        f"{len(same)} of {len(weights)} exported tensors ({dtype}) equal the step-{step} "
        "checkpoint's weights cast to that dtype."
    )
    if len(same) != len(weights):
        raise DemoError("some exported tensors differ from the checkpoint")

    # A differently initialised model: the loss below is only right if the weights came in.
    fresh, _, _, _ = example.build(seed=1, steps=args.steps)
    fresh.load_state_dict({n: t.float() for n, t in exported.items()})
    batch = next(example.SyntheticTokens(seed=0, position=10**6))  # same data, never trained on
    losses = []
    for m in (model, fresh):
        m.eval()
        with torch.no_grad():
            logits = m(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, example.VOCAB), batch[:, 1:].reshape(-1)
        )
        losses.append(loss.item())
    say(
        f"A fresh model loaded from the export scores loss {losses[1]:.4f} on a held-out batch "
        f"of {example.BATCH} sequences; the fp32 checkpoint scores {losses[0]:.4f} "
        "(any difference is bf16 rounding)."
    )
    if abs(losses[0] - losses[1]) > 0.05:
        raise DemoError("the exported model's loss is far from the checkpoint's")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    prepare_out(out)
    kf_ckpt_path()
    started = time.monotonic()
    config = load_config(JOB, args.overrides)
    window = config.dyn_ckpt_window
    saves = (
        f"at the {window.strategy} milestones of steps {window.start}..{window.stop} and every "
        f"{config.interval} steps outside that window"
        if window is not None
        else f"every {config.interval} steps"
    )
    say(
        f"kempnerforge demo: output in {shown(out)}/, job file {shown(JOB)}"
        + (f" with {' '.join(args.overrides)}" if args.overrides else "")
        + f" (keep_last_n {config.keep_last_n}, async_mode {config.async_mode.value})."
    )

    heading(
        1,
        "An uninterrupted run (the reference)",
        f"train.py trains a tiny transformer on synthetic tokens for {args.steps} steps; "
        f"CheckpointManager saves {saves}.",
    )
    if train(out, "reference", args, in_process=True) != 0:
        raise DemoError("the reference run failed; see its output above")

    heading(
        2,
        "The same run, killed part-way",
        f"We start over in a new directory and the process SIGKILLs itself after step "
        f"{args.kill_at}, with no chance to clean up, as a preempted or crashed job would.",
    )
    code = train(out, "run", args, kill_at=args.kill_at)
    if code != -signal.SIGKILL:
        raise DemoError(f"the run to be killed exited with {code}, not by SIGKILL")
    describe_crash(out / "run")
    kf_ckpt("ls", shown(out / "run"))

    heading(
        3,
        "Resume",
        "The same command again: CheckpointManager.load() follows `latest`, restores the "
        "whole training state, and training continues to the end.",
    )
    if train(out, "run", args) != 0:
        raise DemoError("the resumed run failed; see its output above")
    compare_losses(out)

    heading(
        4,
        "kf-ckpt ls",
        "Every checkpoint with its status, size, marks (latest, milestone) and what gc would "
        "do with it; ls reads the run's config from the checkpoints' metadata.json.",
    )
    kf_ckpt("ls", shown(out / "run"))

    heading(
        5,
        "kf-ckpt gc --dry-run",
        "The retention plan if we keep only the newest non-milestone checkpoint "
        f"(--keep-last-n 1 wins over the run's keep_last_n = {config.keep_last_n}); "
        "nothing is deleted.",
    )
    kf_ckpt("gc", shown(out / "run"), "--keep-last-n", "1", "--dry-run")

    heading(
        6,
        "kf-ckpt gc",
        "The same plan, applied under the root's lock: each victim is renamed into "
        ".kf-trash/ and then removed, so no checkpoint is ever left half-deleted.",
    )
    kf_ckpt("gc", shown(out / "run"), "--keep-last-n", "1")

    heading(
        7,
        "kf-ckpt plan",
        "Before a long run: which steps it saves, which survive, and the peak disk use for "
        "a checkpoint size, here 100,000 steps of a model whose checkpoint is 26 GB.",
    )
    overrides = [arg for o in args.overrides for arg in ("--set", o)]
    kf_ckpt("plan", "-c", shown(JOB), *overrides, "--max-steps", "100000", "--ckpt-size", "26GB")

    heading(
        8,
        "kf-ckpt export",
        "export streams the model part of the newest checkpoint into safetensors, in the run's "
        f"export_dtype ({config.export_dtype}), without reading the optimizer state; --verify "
        "reads the output back and compares every tensor (kf-ckpt show lists them instead).",
    )
    kf_ckpt("export", shown(out / "run"), "-o", shown(out / "export"), "--verify")

    heading(
        9,
        "Load the exported weights back",
        "The exported file is plain safetensors: compare it with the checkpoint and run a "
        "fresh model on it.",
    )
    check_export(out, args)

    heading(
        10,
        "kf-ckpt trace",
        "What the kept checkpoints are for: how the weights moved early in training. trace "
        "reads each checkpoint once (model part only, in bounded batches) and gives, per layer "
        "(--depth 2) and for the whole model, the weight norm at each step and the relative "
        "change since the previous kept step; * marks the window's milestones.",
    )
    plot = importlib.util.find_spec("matplotlib") is not None
    figure = ["--plot", shown(out / FIGURE)] if plot else []
    kf_ckpt("trace", shown(out / "run"), "--depth", "2", *figure)
    if not plot:
        say("(No figure: matplotlib is not installed; pip install 'kempnerforge[plot]'.)")

    print(
        f"\nDemo finished in {time.monotonic() - started:.0f} s. Checkpoints, losses, the "
        f"export{' and the trace figure' if plot else ''} are in {shown(out)}/."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="demo-output", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=400, help="training steps (default: %(default)s)"
    )
    parser.add_argument(
        "--kill-at",
        type=int,
        default=350,
        help="step after which run 2 is killed (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra [checkpoint] override for every run, e.g. checkpoint.interval=10",
    )
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < args.steps:
        parser.error(f"--kill-at must be between 1 and --steps - 1, got {args.kill_at}")
    try:
        run(args)
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
