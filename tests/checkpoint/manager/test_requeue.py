"""Requeue, rollback and partial failure: the cases a careful user hit, reproduced with real jobs.

Jobs are real processes forked from a zygote (:mod:`tests.checkpoint.manager._jobs`): killed with
SIGKILL, limited with RLIMIT_FSIZE, paused at a chosen point of a save through a scheduler that
waits for a file. Each test states the case of issue 17 it reproduces and asserts the new outcome.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.manager.train_state import load_train_state
from kempnerforge.checkpoint.store._lock import hold_lock
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import PUBLISH_LOCK_NAME, replaced_dir_name
from kempnerforge.checkpoint.store.lease import LeaseState
from kempnerforge.checkpoint.store.owner import read_owner
from kempnerforge.checkpoint.store.retention import Reason, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._models import assert_bit_equal, build, make_config, snapshot, train_step
from tests.checkpoint._trees import fingerprint
from tests.checkpoint.manager._jobs import (
    Zygote,
    digest,
    kill,
    loaded_model,
    result_of,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


def _inflight(root: Path) -> list[Path]:
    return sorted(root.glob(".kf-inflight.*"))


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in root.glob("step_*") if p.is_dir())


def _expected(result: Path, step: int) -> dict:
    return torch.load(f"{result}.{step}.pt", weights_only=True)


def test_case1_a_failed_resave_never_destroys_the_complete_copy(
    tmp_path: Path, zygote: Zygote
) -> None:
    root, out = tmp_path / "ckpt", tmp_path / "first"
    zygote.start("save_steps", root=str(root), result=str(out), steps=[30, 40, 50], dim=256)
    assert result_of(out)["ok"]
    before = fingerprint(root / "step_50")
    # A run rolled back to 40 re-saves 50 and its shard writes fail (RLIMIT_FSIZE in the child).
    redo = tmp_path / "redo"
    zygote.start(
        "save_steps",
        root=str(root),
        result=str(redo),
        steps=[50],
        seed=1,
        dim=256,
        load_path=str(root / "step_40"),
        fsize_limit=2**20,
    )
    outcome = result_of(redo)
    assert not outcome["ok"] and outcome["type"] == "CheckpointSaveError"
    assert "'latest' not moved" in outcome["message"]
    assert fingerprint(root / "step_50") == before  # untouched, bit for bit
    assert _inflight(root) == []  # the failed save was discarded
    assert read_latest(root).step == 40  # the rollback is recorded; latest names its base
    owner = read_owner(root)
    assert owner is not None and (owner.resumed_from, owner.rolled_back_from) == (40, 50)
    # A retention round afterwards (the one that used to empty the trash) keeps it too.
    collect_garbage(root, CheckpointConfig(keep_last_n=3))
    assert fingerprint(root / "step_50") == before and _steps(root) == [30, 40, 50]


def test_case1b_gc_while_a_replacement_is_written_keeps_the_complete_copy(
    tmp_path: Path, zygote: Zygote
) -> None:
    root, out = tmp_path / "ckpt", tmp_path / "first"
    zygote.start("save_steps", root=str(root), result=str(out), steps=[30, 40, 50])
    assert result_of(out)["ok"]
    before = fingerprint(root / "step_50")
    gate, redo = tmp_path / "gate", tmp_path / "redo"
    pid = zygote.start(
        "save_steps",
        root=str(root),
        result=str(redo),
        steps=[50],
        seed=1,
        load_path=str(root / "step_40"),
        gate_step=50,
        gate=str(gate),
    )
    wait_for(Path(f"{gate}.ready"))  # the replacement's directory exists; shards not yet written
    for _ in range(2):  # unrelated retention rounds
        result = collect_garbage(root, CheckpointConfig(keep_last_n=3))
        (pending,) = result.plan.pending
        assert pending.reason is Reason.in_flight and pending.writer is not None
        assert pending.writer.state is LeaseState.running  # the replacement's writer lives
    assert fingerprint(root / "step_50") == before
    Path(f"{gate}.go").touch()
    assert result_of(redo)["ok"]
    assert not (pid and _inflight(root))
    assert_bit_equal(
        snapshot(loaded_model(root / "step_50"))["model"], _expected(redo, 50)["model"]
    )


def test_case2_and_3_a_replaced_job_can_neither_publish_nor_move_latest_back(
    tmp_path: Path, zygote: Zygote
) -> None:
    root = tmp_path / "ckpt"
    first = tmp_path / "first"
    zygote.start("save_steps", root=str(root), result=str(first), steps=[20])
    assert result_of(first)["ok"]
    # Job A resumes at 20 and starts its save of 30; it stalls after creating its directory.
    a, gate = tmp_path / "a", tmp_path / "gate"
    a_pid = zygote.start(
        "save_steps",
        root=str(root),
        result=str(a),
        steps=[30],
        seed=1,
        gate_step=30,
        gate=str(gate),
    )
    wait_for(Path(f"{gate}.ready"))
    # Job B (the requeue) resumes at 20 too, on another trajectory, and saves 30 and 40.
    b = tmp_path / "b"
    zygote.start("save_steps", root=str(root), result=str(b), steps=[30, 40], seed=2)
    assert result_of(b)["ok"]
    assert read_latest(root).step == 40
    Path(f"{gate}.go").touch()  # zombie A goes on: writes every shard, then tries to publish
    outcome = result_of(a)
    assert not outcome["ok"] and outcome["type"] == "SupersededError"
    assert "another job took over" in outcome["message"]
    assert read_latest(root).step == 40  # case 3: latest did not go back to A's 30
    assert _inflight(root) == [] and _steps(root) == [20, 30, 40]
    assert not any(a_pid == p for p in ())  # A has ended
    for step in (30, 40):  # case 2: B's checkpoints hold B's tensors and B's train state only
        step_dir = root / f"step_{step}"
        state = load_train_state(step_dir / "train_state.pt")
        assert state["seed"] == 2
        model = loaded_model(step_dir)
        assert digest(model) == state["digest"]
        assert_bit_equal(snapshot(model)["model"], _expected(b, step)["model"])
    # And a restart resumes from B's 40, bit-exactly.
    model, optimizer, _ = build(5)
    assert CheckpointManager(make_config(root), model, optimizer).load()[0] == 40
    assert_bit_equal(snapshot(model, optimizer), _expected(b, 40))


def test_case4_an_async_rollback_moves_latest_onto_the_new_branch(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(root, async_mode="async"), model, optimizer)
    for step in (10, 20, 30):
        train_step(model, optimizer)
        manager.save(step)
    manager.wait()
    assert manager.load(path=root / "step_10")[0] == 10
    assert read_latest(root).step == 10  # the rollback: latest names the run's new base
    train_step(model, optimizer)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # a different branch
    manager.save(20)
    expected = snapshot(model, optimizer)
    pending = manager._async.pending if manager._async else None
    assert pending is not None
    pending.future.result()  # the flush completes; nobody calls wait() or save() again
    deadline = time.monotonic() + 60
    while read_latest(root).step != 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_latest(root).step == 20  # a kill now resumes on the new branch
    fresh, fresh_optimizer, _ = build(1)
    assert CheckpointManager(make_config(root), fresh, fresh_optimizer).load()[0] == 20
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected)
    manager.close()


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_case6_a_failed_flush_is_logged_and_the_next_save_still_happens(
    tmp_path: Path, file_size_limit: None, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer, _ = build(0, dim=256, hidden=512)
    manager = CheckpointManager(make_config(tmp_path, async_mode="async"), model, optimizer)
    manager.save(10)
    manager.wait()
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
    try:
        manager.save(20)  # staged; the background shard writes fail
        manager._async.pending.future.exception()  # type: ignore[union-attr]  # let it fail
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
    with caplog.at_level(logging.ERROR, logger="kempnerforge.checkpoint"):
        manager.save(30)  # does not raise: 20's failure is reported, 30 is saved
    assert "background save of step 20" in caplog.text and "regardless" in caplog.text
    manager.wait()
    assert read_latest(tmp_path).step == 30 and _steps(tmp_path) == [10, 30]
    assert _inflight(tmp_path) == []
    manager.close()


def test_case8_retention_keeps_the_checkpoint_a_rolled_back_run_descends_from(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, keep_last_n=2)
    model, optimizer, _ = build(0)
    manager = CheckpointManager(config, model, optimizer)
    for step in (40, 50):
        train_step(model, optimizer)
        manager.save(step)
    rolled, rolled_optimizer, _ = build(1)
    run = CheckpointManager(config, rolled, rolled_optimizer)
    assert run.load(path=tmp_path / "step_40")[0] == 40
    train_step(rolled, rolled_optimizer)
    run.save(45)
    assert _steps(tmp_path) == [40, 45]  # 40 kept (this run's base), the abandoned 50 went
    meta = json.loads((tmp_path / "step_45" / "metadata.json").read_text())
    assert meta["resumed_from"] == {"step": 40, "path": str(tmp_path / "step_40"), "in_root": True}
    plan = plan_retention(scan(tmp_path), config)
    assert [(d.step, d.reason) for d in plan.decisions] == [
        (40, Reason.within_keep_last_n),
        (45, Reason.latest),
    ]
    run.save(46)
    run.save(47)  # two newer of its own: 40 is no longer needed
    assert _steps(tmp_path) == [46, 47]


def test_case8_the_abandoned_branch_fills_keep_last_n_slots_last(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    for step in (40, 50, 60, 70):
        manager.save(step)
    config = make_config(tmp_path, keep_last_n=2)
    run = CheckpointManager(config, *build(1)[:2])
    run.load(path=tmp_path / "step_40")
    plan = plan_retention(scan(tmp_path), config)  # before its first save: 40 is latest
    assert [(d.step, d.reason) for d in plan.decisions] == [
        (40, Reason.latest),
        (50, Reason.beyond_keep_last_n),
        (60, Reason.beyond_keep_last_n),
        (70, Reason.within_keep_last_n),  # the branch it left, in the slot it does not fill yet
    ]
    run.save(45)
    assert _steps(tmp_path) == [40, 45]


def test_a_kill_between_the_complete_save_and_latest_loses_nothing(
    tmp_path: Path, zygote: Zygote
) -> None:
    root, first = tmp_path / "ckpt", tmp_path / "first"
    zygote.start("save_steps", root=str(root), result=str(first), steps=[10, 20])
    assert result_of(first)["ok"]
    before = fingerprint(root / "step_20")
    redo, gate = tmp_path / "redo", tmp_path / "gate"
    pid = zygote.start(
        "save_steps",
        root=str(root),
        result=str(redo),
        steps=[20],
        seed=1,
        load_path=str(root / "step_10"),
        gate_step=20,
        gate=str(gate),
    )
    wait_for(Path(f"{gate}.ready"))  # it owns the root and has created its save's directory
    with hold_lock(root, wait_lock_s=5, name=PUBLISH_LOCK_NAME):  # publishing will wait here
        Path(f"{gate}.go").touch()
        deadline = time.monotonic() + 120
        while not any((p / ".metadata").exists() for p in _inflight(root)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        kill(pid)  # complete on disk (.metadata written), not yet published
    assert fingerprint(root / "step_20") == before  # the old copy is untouched
    assert read_latest(root).step == 10
    # The next run resumes from the newest complete checkpoint of its lineage (10) and re-saves.
    again = tmp_path / "again"
    zygote.start("save_steps", root=str(root), result=str(again), steps=[20], seed=3, keep_last_n=5)
    assert result_of(again)["resumed_at"] == 10
    assert _inflight(root) == []  # the dead save was removed (its writer is gone)
    assert read_latest(root).step == 20
    assert_bit_equal(
        snapshot(loaded_model(root / "step_20"))["model"], _expected(again, 20)["model"]
    )


def test_a_swap_interrupted_by_a_kill_is_undone_by_the_next_run(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    manager.save(10)
    expected = snapshot(model, optimizer)
    before = fingerprint(tmp_path / "step_10")
    # Killed between "set the old step_10 aside" and "rename the new one in":
    aside = tmp_path / replaced_dir_name(10, "0123456789ab")
    os.rename(tmp_path / "step_10", aside)
    fresh, fresh_optimizer, _ = build(1)
    assert CheckpointManager(make_config(tmp_path), fresh, fresh_optimizer).load()[0] == 10
    assert fingerprint(tmp_path / "step_10") == before and not aside.exists()
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected)


MILESTONES = (0, 1, 2, 4, 8, 16, 32, 64)


def test_soak_twenty_requeues_at_random_moments(tmp_path: Path, zygote: Zygote) -> None:
    """A Slurm-style requeue twenty times: the next job starts while the old one still trains
    and saves, and the old one is SIGKILLed a random 0-2 s later."""
    rng = random.Random(17)
    root = tmp_path / "ckpt"
    max_steps = 200
    job_args = {
        "root": str(root),
        "max_steps": max_steps,
        "step_sleep_s": 0.01,
        "interval": 20,
        "keep_last_n": 2,
        "window": [0, 64],
    }

    def start(i: int) -> tuple[int, Path]:
        result = tmp_path / f"job{i}"
        return zygote.start("train", result=str(result), seed=i + 1, **job_args), result

    old = start(0)
    for i in range(1, 21):
        new = start(i)
        time.sleep(rng.uniform(0.0, 2.0))
        kill(old[0])
        old = new
    outcome = result_of(old[1], timeout_s=180)
    assert outcome == {"ok": True, "finished": max_steps}, outcome.get("traceback")

    assert read_latest(root).step == max_steps
    model, optimizer, _ = build(99)
    assert CheckpointManager(make_config(root), model, optimizer).load()[0] == max_steps
    assert_bit_equal(
        snapshot(model, optimizer), torch.load(f"{old[1]}.final.pt", weights_only=True)
    )
    collect_garbage(root, CheckpointConfig(keep_last_n=2))  # as the next cron gc would
    assert list(root.glob(".kf-inflight.*")) == [] and list(root.glob(".kf-replaced.*")) == []
    steps = _steps(root)
    assert set(MILESTONES) <= set(steps)
    for step in steps:  # every checkpoint holds one writer's tensors and train state
        step_dir = root / f"step_{step}"
        state = load_train_state(step_dir / "train_state.pt")  # extras at the top, as upstream
        assert digest(loaded_model(step_dir)) == state["digest"], f"step_{step} is mixed"
