"""Benchmarks of the ``kf-ckpt`` command line: ``ls`` on 2,000 checkpoints and start-up time.

Both figures run the installed script in a subprocess, as cron and people do, against a baseline
measured in the same run on the same machine:

* ``kf-ckpt ls ROOT`` (scan, retention plan, table) on 2,000 checkpoint directories of 20 files
  each, against ``du -sb ROOT`` of the same tree (target: at most 1.5x);
* ``kf-ckpt --help`` against ``python -c "import click"`` (target: at most 1.5x).

The first ``ls`` walks every checkpoint and writes the root's scan cache; it is reported on its
own line (one sample each). Then the runs alternate between ours and the baseline and the
medians are compared. ``ls --json`` (the same scan and plan, no table) is reported too, to show
what rendering 2,000 rows with tabulate costs.

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
from collections.abc import Sequence
from pathlib import Path

N_CHECKPOINTS = 2000
FILES_PER_CHECKPOINT = 20
SHARD_BYTES = 4096
REPEATS_LS = 5
REPEATS_HELP = 15
TARGET_RATIO = 1.5


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
        (step_dir / ".metadata").write_bytes(b"dcp")
    os.symlink(f"step_{N_CHECKPOINTS * 100}", root / "latest")


def _time_s(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _report(name: str, mine: float, theirs: float, baseline_name: str, note: str) -> float:
    ratio = mine / theirs
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(
        f"cli.{name}: ours {mine:.3f} s, {baseline_name} {theirs:.3f} s, ratio {ratio:.2f}x "
        f"(target <= {TARGET_RATIO}x) {verdict}  [{note}]",
        flush=True,
    )
    return ratio


def compare(
    name: str, ours: Sequence[str], baseline: Sequence[str], baseline_name: str, repeats: int
) -> float:
    """Median wall time of ``ours`` over ``baseline`` (alternating runs); prints one line."""
    ours_s: list[float] = []
    base_s: list[float] = []
    for _ in range(repeats):
        ours_s.append(_time_s(ours))
        base_s.append(_time_s(baseline))
    note = f"median of {repeats}; best {min(ours_s):.3f} s vs {min(base_s):.3f} s"
    return _report(name, statistics.median(ours_s), statistics.median(base_s), baseline_name, note)


def main() -> None:
    """Build the tree in a temporary directory, measure both figures, clean up."""
    kf_ckpt = _kf_ckpt()
    tmp = Path(tempfile.mkdtemp(prefix="kf-bench-cli-"))
    try:
        root = tmp / "ckpt"
        build_tree(root)
        ls, du = [kf_ckpt, "ls", str(root)], ["du", "-sb", str(root)]
        first_du = _time_s(du)  # also warms the page cache for both
        first_du = min(first_du, _time_s(du))
        first_ls = _time_s(ls)  # walks every checkpoint, writes the scan cache
        _report("ls_2000_first_run", first_ls, first_du, "du -sb", "one sample; no scan cache")
        compare("ls_2000", ls, du, "du -sb", REPEATS_LS)
        compare("ls_2000_json", [*ls, "--json"], du, "du -sb", REPEATS_LS)
        help_cmd, click_cmd = [kf_ckpt, "--help"], [sys.executable, "-c", "import click"]
        _time_s(help_cmd), _time_s(click_cmd)  # warm the interpreter's files
        compare("help_startup", help_cmd, click_cmd, "python -c 'import click'", REPEATS_HELP)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
