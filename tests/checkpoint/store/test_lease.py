"""Writer leases of in-flight saves: liveness without trusting clocks (issue 17, case 7).

Before: an incomplete directory counted as in flight while its newest mtime was within an hour
of the scanning host's clock, so a dead save dated a day in the future was kept forever, and a
live one whose file server's clock lagged two hours was deleted as abandoned.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.layout import (
    LEASE_NAME,
    LOCK_NAME,
    OWNER_NAME,
    inflight_dir_name,
)
from kempnerforge.checkpoint.store.lease import (
    LEASE_TTL_S,
    LeaseState,
    file_system_now,
    judge_lease,
    new_lease,
    read_lease,
    write_lease,
)
from kempnerforge.checkpoint.store.owner import new_owner, read_owner, write_owner
from kempnerforge.checkpoint.store.retention import Action, Reason, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._trees import decision_for, make_checkpoint, make_root, set_mtime

DAY_S = 86400.0
KEEP2 = CheckpointConfig(keep_last_n=2)


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


def _inflight(root: Path, step: int, *, pid: int | None = None, host: str | None = None) -> Path:
    path = root / inflight_dir_name(step, "a1b2c3d4e5f6")
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(b"shard" * 100)
    lease = new_lease(step, "0123456789abcdef")
    if pid is not None:
        lease = dataclasses.replace(lease, pid=pid, pid_start=None)
    if host is not None:
        lease = dataclasses.replace(lease, host=host, boot_id=None)
    write_lease(path, lease)
    return path


def _root(tmp_path: Path) -> Path:
    root = make_root(tmp_path / "ckpt", [10, 20], latest=20)
    (root / LOCK_NAME).touch()  # a root our manager wrote has its lock file
    return root


def test_a_dead_save_dated_a_day_ahead_is_removed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    dead = _inflight(root, 15, pid=_dead_pid())
    set_mtime(dead, time.time() + DAY_S)
    result = collect_garbage(root, KEEP2)
    (decision,) = result.plan.pending
    assert decision.action is Action.delete and decision.reason is Reason.abandoned_incomplete
    assert decision.writer is not None and decision.writer.state is LeaseState.exited
    assert not dead.exists()


def test_a_live_save_dated_two_hours_back_is_kept(tmp_path: Path) -> None:
    root = _root(tmp_path)
    live = _inflight(root, 15)  # this process writes it
    set_mtime(live, time.time() - 2 * 3600)  # a file server whose clock lags two hours
    result = collect_garbage(root, KEEP2)
    (decision,) = result.plan.pending
    assert decision.action is Action.keep and decision.reason is Reason.in_flight
    writer = decision.writer
    assert writer is not None and writer.state is LeaseState.running and writer.live
    assert writer.lease is not None and writer.lease.pid == os.getpid()
    assert live.is_dir() and (live / "__0_0.distcp").is_file()


def test_a_recycled_pid_does_not_keep_a_save_alive(tmp_path: Path) -> None:
    root = _root(tmp_path)
    path = _inflight(root, 15)
    lease, mtime_s, _ = read_lease(path)
    assert lease is not None and mtime_s is not None and lease.pid_start is not None
    recycled = dataclasses.replace(lease, pid_start=lease.pid_start + 1)
    verdict = judge_lease(recycled, mtime_s, mtime_s)
    assert verdict.live is False and verdict.state is LeaseState.exited


def test_leases_from_other_hosts_are_judged_on_the_file_systems_clock() -> None:
    lease = dataclasses.replace(new_lease(7, "token"), host="node-b", boot_id=None)
    local_now = time.time()
    server_now = local_now - 2 * 3600  # the file server's clock lags two hours
    beat = server_now - 5  # its last heartbeat, as the server stamped it
    fresh = judge_lease(lease, beat, server_now)
    assert (
        fresh.live
        and fresh.state is LeaseState.beating
        and fresh.heartbeat_age_s == pytest.approx(5)
    )
    assert fresh.lease == lease  # the writer's identity travels with the verdict
    stale = judge_lease(lease, beat, server_now + LEASE_TTL_S + 60)
    assert stale.live is False and stale.state is LeaseState.stale
    assert stale.heartbeat_age_s == pytest.approx(LEASE_TTL_S + 65)
    ahead = judge_lease(lease, server_now + DAY_S, server_now)
    assert ahead.live is False and ahead.state is LeaseState.ahead
    assert ahead.heartbeat_age_s == pytest.approx(-DAY_S)
    unreadable = judge_lease(lease, float("nan"), server_now)
    assert unreadable.live is False and unreadable.state is LeaseState.heartbeat_unreadable
    assert unreadable.heartbeat_age_s is None


def test_file_system_now_reads_the_lock_files_clock(tmp_path: Path) -> None:
    assert file_system_now(tmp_path) is None  # no lock file: never created by a reader
    (tmp_path / LOCK_NAME).touch()
    os.utime(tmp_path / LOCK_NAME, (0, 0))
    now = file_system_now(tmp_path)
    assert now is not None and abs(now - time.time()) < 60


def test_an_incomplete_step_dir_dated_a_day_ahead_is_abandoned(tmp_path: Path) -> None:
    root = _root(tmp_path)
    make_checkpoint(root, 15, complete=False, mtime_s=time.time() + DAY_S)
    catalog = scan(root)
    assert catalog.clock_s is not None  # measured on the file system's clock
    decision = decision_for(plan_retention(catalog, KEEP2), 15)
    assert decision.reason is Reason.abandoned_incomplete
    assert decision.idle_s is not None and decision.idle_s < -LEASE_TTL_S  # dated ahead
    # A recent write into an in-place save (upstream's writer) is still in flight.
    make_checkpoint(root, 16, complete=False)
    decision = decision_for(plan_retention(scan(root), KEEP2), 16)
    assert decision.reason is Reason.in_flight


def test_a_save_without_a_readable_lease_is_judged_by_its_mtime(tmp_path: Path) -> None:
    root = _root(tmp_path)
    recent = _inflight(root, 15)
    (recent / LEASE_NAME).write_text("{corrupt")
    old = root / inflight_dir_name(16, "0a0b0c0d0e0f")
    old.mkdir()
    set_mtime(old, time.time() - 3 * 3600)
    plan = plan_retention(scan(root), KEEP2)
    verdicts = {d.name: (d.action, d.writer and d.writer.state) for d in plan.pending}
    assert verdicts[recent.name] == (Action.keep, LeaseState.corrupt)
    assert verdicts[old.name] == (Action.delete, LeaseState.missing)
    idle = {d.name: d.idle_s for d in plan.pending}  # judged by their mtimes instead
    assert idle[old.name] is not None and idle[old.name] > 3 * 3600 - 60  # type: ignore[operator]


def test_kf_ckpt_ls_shows_in_flight_saves_with_their_step_and_the_lineage(tmp_path: Path) -> None:
    root = _root(tmp_path)
    live = _inflight(root, 25)
    dead = _inflight(root, 15, pid=_dead_pid())
    dead.rename(root / inflight_dir_name(15, "ffffffffffff"))
    owner = new_owner(resumed_from=10, resumed_from_path=str(root / "step_10"), rolled_back_from=20)
    write_owner(root, owner)
    kf_ckpt = str(Path(sys.executable).with_name("kf-ckpt"))
    policy = ["--set", "checkpoint.keep_last_n=2"]  # a known policy: gc would delete
    done = subprocess.run(
        [kf_ckpt, "ls", str(root), *policy, "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    rows = {(row["step"], row["status"], row["gc_action"]) for row in doc["in_flight"]}
    assert rows == {(25, "in-flight", "keep"), (15, "abandoned", "delete")}
    (row,) = [r for r in doc["in_flight"] if r["step"] == 25]
    assert row["path"] == str(live) and row["lease"]["pid"] == os.getpid()
    assert doc["lineage"]["resumed_from"] == 10 and doc["lineage"]["rolled_back_from"] == 20
    assert doc["lineage"]["off_lineage"] == [20]  # written by another run, newer than its base
    table = subprocess.run(
        [kf_ckpt, "ls", str(root), *policy], capture_output=True, text=True, timeout=60
    )
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["25", "in-flight"] for line in lines)
    assert any(line.split()[:2] == ["15", "abandoned"] for line in lines)
    assert "(and 2 saves not yet published)" in lines[-1]
    # Without a known policy nothing is deleted, but the dead save is still shown as abandoned.
    bare = json.loads(
        subprocess.run(
            [kf_ckpt, "ls", str(root), "--json"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    rows = {(row["step"], row["status"], row["gc_action"]) for row in bare["in_flight"]}
    assert rows == {(25, "in-flight", "keep"), (15, "abandoned", "keep")}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 60_000,
        '{"format": "kf-lease", "step": 1, "pid": true, "owner": "o", "host": "h", "token": "t"}',
    ],
    ids=["nested-too-deep", "boolean-pid"],
)
def test_a_hostile_lease_or_owner_file_is_unreadable_not_a_crash(tmp_path: Path, text: str) -> None:
    # A 60,000-deep array fits in the 64 kB bound yet makes json.loads recurse past the
    # interpreter's limit; true is not a pid. Both are simply not a lease / an owner.
    save = _inflight(_root(tmp_path), 15)
    (save / LEASE_NAME).write_text(text)
    lease, _, problem = read_lease(save)
    assert lease is None and problem is not None and problem.state is LeaseState.corrupt
    (tmp_path / "ckpt" / OWNER_NAME).write_text(text.replace("kf-lease", "kf-owner"))
    assert read_owner(tmp_path / "ckpt") is None
    assert scan(tmp_path / "ckpt").owner is None
