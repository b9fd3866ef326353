"""Training with async saves while ``kf-ckpt gc`` runs in a loop from another process.

The two race for the root's lock all along: the manager's own retention rounds after each save,
and the cron-like loop. Whatever the interleaving, nothing that retention keeps may be lost, no
checkpoint may be left half-deleted, and the run must resume from ``latest``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import TRASH_NAME, check_complete, list_step_dirs
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from tests.checkpoint._models import assert_bit_equal, build, snapshot, train_step
from tests.cli.conftest import KF_CKPT

MILESTONES = [1, 2, 4, 8, 16, 32, 64]  # power2 over [0, 64], saved after steps 1..N
# 20 steps between saves outlast an async flush of the tiny model, so the gc loop often runs
# after a save is complete and before the manager's own retention round at the next save(): then
# gc, not the manager, deletes the checkpoint that fell out of keep_last_n -- the race under test.
INTERVAL = 20
LAST_STEP = 720  # 7 milestones + 33 interval saves (80 .. 720) = 40 saves

# Runs `kf-ckpt gc ROOT` until the stop file appears (at least once), one JSON line per run.
GC_LOOP = """
import subprocess, sys, json
from pathlib import Path
kf_ckpt, root, stop, log = sys.argv[1:]
with open(log, "w") as out:
    while True:
        done = subprocess.run([kf_ckpt, "gc", root, "--json"], capture_output=True, text=True)
        deleted = json.loads(done.stdout)["deleted"] if done.returncode == 0 else []
        out.write(json.dumps({"rc": done.returncode, "deleted": deleted, "err": done.stderr}) + "\\n")
        out.flush()
        if Path(stop).exists():
            break
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory (/dev/shm) when there is one, else ``tmp_path``.

    The race is the same on any local filesystem (rename, flock and fsync behave alike); on
    tmpfs the 40 saves' fsyncs do not wait for a disk shared with the other tests.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="kf-ckpt-stress-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """A tiny model trains ~20x faster on one thread than with threads fighting the gc loop."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_async_training_and_a_gc_loop_never_lose_a_kept_checkpoint(workdir: Path) -> None:
    root = workdir / "ckpt"
    root.mkdir()
    window = DynamicCheckpointWindow(start=0, stop=64)
    config = CheckpointConfig(
        dir=str(root), interval=INTERVAL, keep_last_n=2, dyn_ckpt_window=window, async_mode="async"
    )
    stop, log = workdir / "stop", workdir / "gc.jsonl"
    gc_loop = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, KF_CKPT, str(root), str(stop), str(log)]
    )
    try:
        model, optimizer, scheduler = build(0)
        manager = CheckpointManager(config, model, optimizer)
        saved = []
        for step in range(1, LAST_STEP + 1):
            train_step(model, optimizer, scheduler)
            if config.should_save(step):
                manager.save(step, tokens_seen=step * 64, scheduler=scheduler)
                saved.append(step)
        manager.close()
        expected = snapshot(model, optimizer)
    finally:
        stop.touch()
        gc_loop.wait(timeout=120)
    interval_saves = list(range(80, LAST_STEP + 1, INTERVAL))
    assert saved == MILESTONES + interval_saves and len(saved) == 40

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert runs, "the gc loop never ran"
    assert all(run["rc"] in (0, 75) for run in runs), [r for r in runs if r["rc"] not in (0, 75)]
    deleted_by_gc = {step for run in runs for step in run["deleted"]}
    assert not deleted_by_gc & {*MILESTONES, *interval_saves[-2:]}

    # No step dir is partly deleted: every one left is complete, with the same files as latest.
    files = sorted(os.listdir(root / f"step_{LAST_STEP}"))
    for step, step_dir in list_step_dirs(root):
        assert check_complete(step_dir).complete, step
        assert sorted(os.listdir(step_dir)) == files, step
    assert not (root / TRASH_NAME).exists() or not os.listdir(root / TRASH_NAME)

    # A last gc, with nothing racing it, leaves exactly what retention keeps.
    final = subprocess.run([KF_CKPT, "gc", str(root)], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert [step for step, _ in list_step_dirs(root)] == [*MILESTONES, *interval_saves[-2:]]

    # latest loads, bit-exactly, into fresh objects.
    assert read_latest(root).step == LAST_STEP
    fresh_model, fresh_optimizer, _ = build(1)
    step, tokens_seen, _ = CheckpointManager(config, fresh_model, fresh_optimizer).load()
    assert (step, tokens_seen) == (LAST_STEP, LAST_STEP * 64)
    assert_bit_equal(snapshot(fresh_model, fresh_optimizer), expected)
