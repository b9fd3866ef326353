"""Retention never holds up training: victims renamed before save()/wait() returns, deleted behind.

Real saves, a real SIGKILL of a training process while its background thread deletes, the
installed ``kf-ckpt gc`` run in a loop beside a training loop, and two gloo ranks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import TRASH_NAME, check_complete, list_step_dirs
from tests._cli import run_installed
from tests.checkpoint._models import build, make_config, train_step
from tests.checkpoint._trees import add_entries

EMPTIER = "kf-ckpt trash emptier"
REPO = Path(__file__).resolve().parents[3]


def _steps(root: Path) -> list[int]:
    return [step for step, _ in list_step_dirs(root)]


def _emptiers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(EMPTIER)]


@pytest.mark.parametrize("mode", ["disabled", "async"])
def test_victims_leave_the_root_before_the_call_returns_and_the_trash_is_empty_after_close(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(
        make_config(tmp_path, keep_last_n=1, async_mode=mode), model, optimizer
    )
    manager.save(1)
    manager.wait()
    add_entries(tmp_path / "step_1", 3000)

    with caplog.at_level(logging.INFO, logger="kempnerforge.checkpoint"):
        manager.save(2)
        if mode == "disabled":
            assert _steps(tmp_path) == [2]  # sync: gone from the root when save() returns
        manager.wait()
        assert _steps(tmp_path) == [2]  # async: when wait() returns
        manager.close()

    assert not (tmp_path / TRASH_NAME).exists()
    assert not _emptiers()
    assert read_latest(tmp_path).step == 2
    assert "retention moved step_1 into .kf-trash (size unknown)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


_KILLED_RUN = """
import sys, time
from pathlib import Path
from kempnerforge.checkpoint.manager import CheckpointManager
from tests.checkpoint._models import build, make_config
from tests.checkpoint._trees import add_entries

root = Path(sys.argv[1])
model, optimizer, _ = build(0)
manager = CheckpointManager(make_config(root, keep_last_n=1), model, optimizer)
manager.save(1)
add_entries(root / "step_1", 10_000)
manager.save(2)  # step_1 goes into the trash; the background thread starts deleting it
print("saved", flush=True)
time.sleep(120)
"""


def test_sigkill_while_the_background_thread_deletes_and_the_next_run_finishes(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_RUN), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    trash = tmp_path / TRASH_NAME
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "saved\n"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some, not all, of step_1 is gone
            victims = os.listdir(trash) if trash.exists() else []
            if victims and 0 < len(os.listdir(trash / victims[0])) < 10_000:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    (victim,) = os.listdir(trash)
    left = len(os.listdir(trash / victim))
    assert victim.startswith("step_1.") and 0 < left < 10_000, "not killed mid-deletion"
    assert _steps(tmp_path) == [2]  # nothing partly deleted in the root
    assert check_complete(tmp_path / "step_2").complete
    assert read_latest(tmp_path).step == 2

    model, optimizer, _ = build(1)
    manager = CheckpointManager(make_config(tmp_path, keep_last_n=1), model, optimizer)
    assert manager.load()[0] == 2
    manager.save(3)
    manager.close()

    assert _steps(tmp_path) == [3]
    assert not trash.exists()  # the next run finished the killed run's trash


def test_a_kf_ckpt_gc_loop_during_training_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(make_config(tmp_path, keep_last_n=2), model, optimizer)
    manager.save(0)
    runs: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Event()

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(run_installed("gc", str(tmp_path), "--keep-last-n", "2", cwd=tmp_path))

    gc = threading.Thread(target=gc_loop)
    gc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="kempnerforge.checkpoint"):
            for step in range(1, 9):
                train_step(model, optimizer, scheduler)
                manager.save(step)
                add_entries(tmp_path / f"step_{step}", 1500)
                assert _steps(tmp_path)[-2:] == [step - 1, step]
                assert all(check_complete(path).complete for _, path in list_step_dirs(tmp_path))
            while len(runs) < 3:  # let gc overlap the last rounds a few times
                time.sleep(0.05)
    finally:
        stop.set()
        gc.join(timeout=120)
    manager.close()

    assert [r.returncode for r in runs if r.returncode not in (0, 75)] == [], runs
    assert not any("Traceback" in r.stderr for r in runs)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _steps(tmp_path) == [7, 8]
    assert read_latest(tmp_path).step == 8
    assert not (tmp_path / TRASH_NAME).exists()


def _rank(rank: int, out: Path) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'rendezvous'}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        root = out / "ckpt"
        model, optimizer, _ = build(0)
        manager = CheckpointManager(make_config(root, keep_last_n=1), model, optimizer)
        manager.save(1)
        if rank == 0:
            add_entries(root / "step_1", 10_000)
        dist.barrier()
        manager.save(2)  # rank 0 renames step_1 into the trash and starts deleting it
        report: dict[str, object] = {"emptiers": _emptiers()}
        dist.barrier()  # both past save(): rank 1 did not wait for the deletion
        report["steps"] = _steps(root)
        if rank == 0:
            report["trash_after_barrier"] = os.listdir(root / TRASH_NAME)
        manager.close()
        report["trash_after_close"] = (root / TRASH_NAME).exists()
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_on_two_ranks_retention_runs_on_rank_0_and_rank_1_never_waits(tmp_path: Path) -> None:
    context = mp.spawn(_rank, args=(tmp_path,), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish within 180 s")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert rank1["emptiers"] == []  # no retention thread at all on rank 1
    assert len(rank0["emptiers"]) == 1
    (in_trash,) = rank0["trash_after_barrier"]  # still deleting after the collective
    assert in_trash.startswith("step_1.")
    assert rank0["steps"] == rank1["steps"] == [2]
    assert rank0["trash_after_close"] is False
