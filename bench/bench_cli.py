"""Benchmarks of the ``kf-ckpt`` command line: ``ls`` on 2,000 checkpoints and start-up time.

Every figure runs the installed script in a subprocess, as cron and people do, against a
baseline measured in the same run on the same machine, the two alternating round by round:

* ``ls_2000``: ``kf-ckpt ls ROOT`` (scan, retention plan, table) on 2,000 checkpoint
  directories of 20 files each, the root's scan cache in place (every run after the first),
  against ``du -sb ROOT`` of the same tree. Target: at most 1.5x.
* ``ls_2000_cold``: the same with no scan cache (deleted before each run: every checkpoint is
  walked, every metadata.json read, the cache written). Target: at most 1.5x; the floor line
  printed with it says why it is missed.
* ``ls_2000_json``: ``kf-ckpt ls ROOT --json``, cache in place (the same scan and plan, one
  JSON document instead of the table).
* ``help_startup``: ``kf-ckpt --help`` against ``python -c "import click"``. Target: at most
  1.5x.
* ``plan_1e12``: ``kf-ckpt plan --max-steps 1000000000000 --json`` with an interval of 1 and
  ``keep_last_n = 0`` (a trillion saves kept) against ``kf-ckpt --help``: the plan is computed
  from the milestones and the kept saves, never save by save. Target: at most 1.5x (well under
  a second).

Both sides run with Python's bytecode cache, as an installed package does (pip compiles it at
install time, and click's is in site-packages): the subprocesses get a private
``PYTHONPYCACHEPREFIX`` in the temp dir, warmed before timing, even where the environment sets
``PYTHONDONTWRITEBYTECODE``. Where it does, ``ls_2000_no_bytecode`` shows ``ls`` as such an
environment runs it: compiling kempnerforge's modules on every start.

A figure is the median over the rounds of ours / baseline of the same round, so that the
machine's drift over the run cancels out; the medians and the best runs of each side are
printed too. The page cache and dentry cache are warm for both sides throughout.

Example:
    $ python -m bench cli
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kempnerforge.checkpoint.store._scan_cache import RACY_WINDOW_S
from kempnerforge.checkpoint.store.layout import CACHE_NAME
from tests.checkpoint._trees import dcp_manifest

N_CHECKPOINTS = 2000
FILES_PER_CHECKPOINT = 20
SHARD_BYTES = 4096
ROUNDS_LS = 11
ROUNDS_COLD = 5
ROUNDS_OTHER = 7
ROUNDS_HELP = 15
TARGET_RATIO = 1.5

Env = Mapping[str, str]

# The least a Python process can do for a cold listing: start, then one lstat per entry.
_FLOOR_CODE = """
import os, sys
flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
root_fd = os.open(sys.argv[1], flags)
for name in os.listdir(root_fd):
    os.lstat(name, dir_fd=root_fd)
    if name.startswith("step_"):
        fd = os.open(name, flags, dir_fd=root_fd)
        for child in os.listdir(fd):
            os.lstat(child, dir_fd=fd)
        os.close(fd)
"""


def _kf_ckpt() -> str:
    script = Path(sys.executable).with_name("kf-ckpt")
    found = str(script) if script.exists() else shutil.which("kf-ckpt")
    if found is None:
        raise SystemExit("kf-ckpt is not installed; run 'make install'")
    return found


def build_tree(root: Path) -> None:
    """2,000 complete checkpoints of 20 files (17 shards, .metadata, train_state, metadata.json)."""
    config = {"interval": 100, "keep_last_n": 3}
    shard = b"\0" * SHARD_BYTES
    # A manifest naming every shard, as DCP writes it: ls checks each checkpoint in full.
    manifest = dcp_manifest(
        {f"__{k}_0.distcp": SHARD_BYTES for k in range(FILES_PER_CHECKPOINT - 3)}
    )
    for i in range(1, N_CHECKPOINTS + 1):
        step = i * 100
        step_dir = root / f"step_{step}"
        step_dir.mkdir(parents=True)
        for k in range(FILES_PER_CHECKPOINT - 3):
            (step_dir / f"__{k}_0.distcp").write_bytes(shard)
        (step_dir / "train_state.pt").write_bytes(shard)
        (step_dir / "metadata.json").write_text(
            json.dumps({"step": step, "tokens_seen": step * 4096, "checkpoint": config})
        )
        (step_dir / ".metadata").write_bytes(manifest)
    os.symlink(f"step_{N_CHECKPOINTS * 100}", root / "latest")


def _time_s(argv: Sequence[str], env: Env | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def compare(
    name: str,
    ours: Sequence[str],
    baseline: Sequence[str],
    baseline_name: str,
    rounds: int,
    *,
    env: Env | None = None,
    before_ours: Path | None = None,
    note: str = "",
) -> float:
    """Run ``ours`` and ``baseline`` alternately; print the median per-round ratio.

    ``before_ours``: a file to delete before each run of ours (the scan cache, for cold runs).
    """
    ours_s: list[float] = []
    base_s: list[float] = []
    for i in range(rounds):
        for side in ("ours", "base") if i % 2 else ("base", "ours"):  # alternate who goes first
            if side == "base":
                base_s.append(_time_s(baseline, env))
                continue
            if before_ours is not None:
                before_ours.unlink(missing_ok=True)
            ours_s.append(_time_s(ours, env))
    ratio = statistics.median(o / b for o, b in zip(ours_s, base_s, strict=True))
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(
        f"cli.{name}: ours {statistics.median(ours_s):.3f} s, {baseline_name} "
        f"{statistics.median(base_s):.3f} s, ratio {ratio:.2f}x (target <= {TARGET_RATIO}x) "
        f"{verdict}  [median of {rounds} rounds; best {min(ours_s):.3f} s vs {min(base_s):.3f} s"
        f"{'; ' + note if note else ''}]",
        flush=True,
    )
    return ratio


def _with_bytecode(tmp: Path) -> dict[str, str]:
    """The environment of an installed package: bytecode cached (here in a private dir)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def main() -> None:
    """Build the tree in a temporary directory, measure each figure, clean up."""
    kf_ckpt = _kf_ckpt()
    tmp = Path(tempfile.mkdtemp(prefix="kf-bench-cli-"))
    try:
        root = tmp / "ckpt"
        build_tree(root)
        built_s = time.time()
        env = _with_bytecode(tmp)
        ls, du = [kf_ckpt, "ls", str(root)], ["du", "-sb", str(root)]
        help_cmd, click_cmd = [kf_ckpt, "--help"], [sys.executable, "-c", "import click"]
        for argv in (du, help_cmd, click_cmd, [*ls, "--json"]):
            _time_s(argv, env)  # warm the page cache and compile the bytecode of both sides
        # A checkpoint written within the cache's racy window is walked again next time, not
        # cached; real ones are older, and so must these be before the cache is first written.
        time.sleep(max(0.0, built_s + RACY_WINDOW_S + 0.1 - time.time()))
        cache = root / CACHE_NAME
        note = "no scan cache: every checkpoint walked, the cache written"
        compare(
            "ls_2000_cold", ls, du, "du -sb", ROUNDS_COLD, env=env, before_ours=cache, note=note
        )
        floor = [sys.executable, "-c", _FLOOR_CODE, str(root)]
        note = "floor of a cold ls: python starts, then lstat of every entry and nothing else"
        compare("ls_2000_cold_floor", floor, du, "du -sb", ROUNDS_COLD, env=env, note=note)
        _time_s(ls, env)  # writes the cache the warm runs use
        compare("ls_2000", ls, du, "du -sb", ROUNDS_LS, env=env, note="scan cache in place")
        compare("ls_2000_json", [*ls, "--json"], du, "du -sb", ROUNDS_OTHER, env=env)
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            note = "PYTHONDONTWRITEBYTECODE set, as here: kempnerforge compiled on every start"
            compare("ls_2000_no_bytecode", ls, du, "du -sb", ROUNDS_OTHER, note=note)
        compare(
            "help_startup", help_cmd, click_cmd, "python -c 'import click'", ROUNDS_HELP, env=env
        )
        plan = [kf_ckpt, "plan", "--max-steps", str(10**12), "--json", "--set", f"dir={tmp}"]
        note = "10**12 steps, interval 1, keep_last_n 0: a trillion saves, summarised (< 1 s)"
        plan += ["--set", "interval=1", "--set", "keep_last_n=0"]
        compare("plan_1e12", plan, help_cmd, "kf-ckpt --help", ROUNDS_OTHER, env=env, note=note)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
