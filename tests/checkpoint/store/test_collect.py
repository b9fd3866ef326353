"""collect_garbage / apply_plan: the lock, re-checks, hostile trees, SIGKILL and concurrency."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kempnerforge.checkpoint.manager._files import write_metadata
from kempnerforge.checkpoint.store.apply import ApplyResult, apply_plan
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage, hold_lock
from kempnerforge.checkpoint.store.files import read_latest, update_latest
from kempnerforge.checkpoint.store.layout import LOCK_NAME, TRASH_NAME
from kempnerforge.checkpoint.store.owner import claim_root
from kempnerforge.checkpoint.store.publish import begin_save, publish_save
from kempnerforge.checkpoint.store.retention import (
    IN_FLIGHT_GRACE_S,
    Reason,
    RetentionPlan,
    plan_retention,
)
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import (
    CheckpointRootError,
    LockBusyError,
    RetentionError,
)
from tests.checkpoint._trees import (
    as_unprivileged,
    dcp_manifest,
    decision_for,
    fingerprint,
    make_checkpoint,
    make_root,
    set_latest,
    snapshot,
    tree_listing,
    unprivileged_dir,
)

KEEP2 = CheckpointConfig(keep_last_n=2)
OLD_S = 1_600_000_000.0  # an mtime far outside retention's in-flight grace period


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step_"))


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_collect_garbage_deletes_exactly_the_victims(tmp_path: Path) -> None:
    make_root(tmp_path, [100, 200, 300, 400], latest=400, files=3, size=500)
    make_checkpoint(tmp_path, 150, complete=False, mtime_s=OLD_S)  # abandoned
    make_checkpoint(tmp_path, 500, complete=False)  # in flight
    before = snapshot(tmp_path)
    result = collect_garbage(tmp_path, KEEP2)
    applied = result.applied
    assert applied is not None and applied.ok
    assert [d.step for d in applied.deleted] == [100, 150, 200]
    assert applied.bytes_freed == result.plan.bytes_freed > 0
    assert (applied.vanished, applied.failed, applied.skipped) == ((), (), ())
    assert _steps(tmp_path) == [300, 400, 500]
    after = snapshot(tmp_path)
    assert all(after[name] == before[name] for name in ("step_300", "step_400", "step_500"))
    assert not (tmp_path / TRASH_NAME).exists()
    assert (tmp_path / LOCK_NAME).is_file()
    assert [c.step for c in result.catalog.checkpoints] == [100, 150, 200, 300, 400, 500]
    again = collect_garbage(tmp_path, KEEP2).applied
    assert again == ApplyResult()  # nothing left to do


def test_rollback_keeps_the_save_in_progress_below_the_newest_complete(tmp_path: Path) -> None:
    # A run saved up to step_1000, then was resumed from step_500 (checkpoint.load_path): it is
    # now writing step_600 while step_700 .. step_1000 of the old timeline are complete and
    # latest still names step_1000. A cron gc runs meanwhile, several times. The writer works
    # in place, as upstream KempnerForge does (our manager writes an in-flight directory).
    make_root(tmp_path, range(100, 1100, 100), latest=1000, mtime_s=OLD_S)
    shutil.rmtree(tmp_path / "step_600")  # the rolled-back run writes its own step_600
    make_checkpoint(tmp_path, 550, complete=False, mtime_s=OLD_S)  # killed long ago: abandoned
    config = CheckpointConfig(keep_last_n=2)
    step_dir = tmp_path / "step_600"
    step_dir.mkdir()
    write_metadata(step_dir, step=600, tokens_seen=6, config=config, world_size=1, pp_stages=None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:  # DCP writing shards, one after the other
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                (step_dir / f"__{i}_0.distcp").write_bytes(b"shard" * 100)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [collect_garbage(tmp_path, config) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert errors == []  # the writer never lost its directory
    for result in results:
        decision = decision_for(result.plan, 600)
        assert decision.reason is Reason.in_flight
        # Kept for its recent writes (below step_1000, so not as "newer than the newest").
        assert decision.newest_step == 1000 and decision.idle_s is not None
        assert abs(decision.idle_s) < IN_FLIGHT_GRACE_S
    assert [d.step for d in results[0].applied.deleted] == [100, 200, 300, 400, 500, 550, 700, 800]  # type: ignore[union-attr]
    assert _steps(tmp_path) == [600, 900, 1000]
    (step_dir / ".metadata").write_bytes(dcp_manifest({}))  # the save finishes
    update_latest(tmp_path, 600)
    assert read_latest(tmp_path).step == 600 and _steps(tmp_path) == [600, 900, 1000]


def test_before_delete_sees_the_plan_carried_out_and_can_stop_it(tmp_path: Path) -> None:
    make_root(tmp_path, [1, 2, 3, 4], latest=4)
    seen: list[tuple[int, ...]] = []

    def look(plan: RetentionPlan) -> None:
        assert (tmp_path / LOCK_NAME).is_file()  # called under the lock, before any deletion
        assert _steps(tmp_path) == [1, 2, 3, 4]
        seen.append(tuple(d.step for d in plan.to_delete))

    result = collect_garbage(tmp_path, KEEP2, before_delete=look)
    assert seen == [(1, 2)]
    assert result.applied is not None and [d.step for d in result.applied.deleted] == [1, 2]

    make_root(tmp_path, [5, 6], latest=6)

    def refuse(plan: RetentionPlan) -> None:
        raise RetentionError("not today")

    with pytest.raises(RetentionError, match="not today"):
        collect_garbage(tmp_path, KEEP2, before_delete=refuse)
    assert _steps(tmp_path) == [3, 4, 5, 6]  # nothing deleted
    with hold_lock(tmp_path, wait_lock_s=0):  # and the lock was let go
        pass
    collect_garbage(
        tmp_path, KEEP2, dry_run=True, before_delete=lambda p: seen.append((len(p.to_delete),))
    )
    assert seen[-1] == (2,)  # a dry run shows its plan too: step_3 and step_4


def test_dry_run_plans_without_lock_and_deletes_nothing(tmp_path: Path) -> None:
    make_root(tmp_path, [1, 2, 3, 4], latest=4)
    with hold_lock(tmp_path):
        result = collect_garbage(tmp_path, KEEP2, dry_run=True)
    assert result.applied is None
    assert [d.step for d in result.plan.to_delete] == [1, 2]
    assert _steps(tmp_path) == [1, 2, 3, 4]
    assert not (tmp_path / TRASH_NAME).exists()


def test_lock_busy_is_a_distinct_error(tmp_path: Path) -> None:
    make_root(tmp_path, [1, 2, 3], latest=3)
    plan = plan_retention(scan(tmp_path), KEEP2)
    with hold_lock(tmp_path):
        with pytest.raises(LockBusyError, match=r"\.kf-ckpt\.lock is held by another process") as e:
            collect_garbage(tmp_path, KEEP2)
        assert e.value.exit_code == 75 and f"pid {os.getpid()}" in str(e.value)
        for wait_s in (0.05, -1.0, float("nan")):
            with pytest.raises(LockBusyError):
                apply_plan(plan, wait_lock_s=wait_s)
    assert _steps(tmp_path) == [1, 2, 3]
    assert collect_garbage(tmp_path, KEEP2).applied.deleted[0].step == 1  # type: ignore[union-attr]


def test_waiting_for_the_lock_of_another_process(tmp_path: Path) -> None:
    make_root(tmp_path, [1, 2, 3], latest=3)
    release = tmp_path.parent / "release"
    holder = subprocess.Popen(
        _script(f"""
            import pathlib, time
            from kempnerforge.checkpoint.store.collect import hold_lock
            with hold_lock(pathlib.Path({str(tmp_path)!r})):
                print("held", flush=True)
                while not pathlib.Path({str(release)!r}).exists():
                    time.sleep(0.01)
        """),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusyError):
            collect_garbage(tmp_path, KEEP2)
        assert _steps(tmp_path) == [1, 2, 3]
        release.write_text("go")
        result = collect_garbage(tmp_path, KEEP2, wait_lock_s=60)
    finally:
        release.write_text("go")
        holder.wait(timeout=60)
    assert [d.step for d in result.applied.deleted] == [1]  # type: ignore[union-attr]


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointRootError, match="does not exist"):
        collect_garbage(tmp_path / "nope", KEEP2)
    plan = plan_retention(scan(make_root(tmp_path / "r", [1])), KEEP2)
    (tmp_path / "r" / "step_1").rename(tmp_path / "elsewhere")
    (tmp_path / "r").rmdir()
    with pytest.raises(CheckpointRootError):
        apply_plan(plan)


def test_stale_plan_rechecks_each_victim(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_checkpoint(outside, 7, files=4)
    root = make_root(tmp_path / "root", [1, 2, 3, 4, 5, 6, 7], latest=7)
    plan = plan_retention(scan(root), KEEP2)
    assert [d.step for d in plan.to_delete] == [1, 2, 3, 4, 5]
    # Since the plan was made: step_1 is gone, step_2 became latest (a rollback), step_3 was
    # swapped for a symlink to a directory outside the root, step_4 for a plain file.
    collect_garbage(root, CheckpointConfig(keep_last_n=6))  # deletes step_1
    update_latest(root, 2)
    (root / "step_3").rename(tmp_path / "step_3.moved")
    os.symlink(outside / "step_7", root / "step_3")
    (root / "step_4").rename(tmp_path / "step_4.moved")
    (root / "step_4").write_text("a file now")
    outside_before = fingerprint(outside)
    result = apply_plan(plan)
    assert [d.step for d in result.vanished] == [1]
    assert {s.step: s.reason for s in result.skipped} == {
        2: "step_2 is now the target of latest",
        3: "step_3 is now a symlink; symlinks are never followed or deleted",
        4: "step_4 is no longer a directory",
    }
    assert [d.step for d in result.deleted] == [5] and result.ok
    assert fingerprint(outside) == outside_before
    assert (root / "step_3").is_symlink() and (root / "step_4").is_file()


def test_a_forged_decision_outside_the_root_is_refused(tmp_path: Path) -> None:
    outside = make_root(tmp_path / "outside", [1])
    root = make_root(tmp_path / "root", [1, 2, 3], latest=3)
    plan = plan_retention(scan(root), KEEP2)
    forged = replace(plan.to_delete[0], path=outside / "step_1")
    before = fingerprint(outside)
    result = apply_plan(replace(plan, decisions=(forged, *plan.to_keep)))
    assert result.deleted == () and "is not the directory step_1 directly inside" in (
        result.skipped[0].reason
    )
    assert fingerprint(outside) == before and _steps(root) == [1, 2, 3]


@pytest.mark.parametrize("target", ["/etc", "..", "latest", "../outside", "../outside/step_1"])
def test_hostile_latest_touches_nothing_outside(tmp_path: Path, target: str) -> None:
    outside = make_root(tmp_path / "outside", [1, 2])
    root = make_root(tmp_path / "root", [1, 2, 3, 4])
    set_latest(root, target)
    before = fingerprint(outside)
    result = collect_garbage(root, KEEP2)
    assert [d.step for d in result.applied.deleted] == [1, 2]  # type: ignore[union-attr]
    assert fingerprint(outside) == before
    assert os.readlink(root / "latest") == target  # the link itself is left alone


def test_symlinks_are_never_followed_while_deleting(tmp_path: Path) -> None:
    outside = make_root(tmp_path / "outside", [1], files=5)
    (outside / "precious.bin").write_bytes(b"keep me")
    root = make_root(tmp_path / "root", [1, 2, 3], latest=3)
    os.symlink(outside / "step_1", root / "step_0")  # a step_N symlink: never a checkpoint
    victim = root / "step_1"
    os.symlink(outside / "precious.bin", victim / "link_to_file")
    os.symlink(outside / "step_1", victim / "link_to_dir")
    os.symlink(outside, victim / "pp0")
    (victim / "nested").mkdir()
    os.symlink("/", victim / "nested" / "root_link")
    before = fingerprint(outside)
    result = collect_garbage(root, CheckpointConfig(keep_last_n=1))
    assert [d.step for d in result.applied.deleted] == [1, 2]  # type: ignore[union-attr]
    assert fingerprint(outside) == before
    assert (root / "step_0").is_symlink() and _steps(root) == [0, 3]


def test_trash_that_is_a_symlink_stops_gc(tmp_path: Path) -> None:
    outside = make_root(tmp_path / "outside", [9])
    root = make_root(tmp_path / "root", [1, 2, 3], latest=3)
    os.symlink(outside, root / TRASH_NAME)
    before = fingerprint(outside)
    with pytest.raises(RetentionError, match="not a real directory"):
        collect_garbage(root, KEEP2)
    assert fingerprint(outside) == before and _steps(root) == [1, 2, 3]


def test_a_save_replacing_its_step_dir_refuses_a_symlinked_trash(tmp_path: Path) -> None:
    # Saves are published by rename now: the old step_2 is set aside in the root, never moved
    # through a trash that points out of it.
    outside = make_root(tmp_path / "outside", [9])
    root = make_root(tmp_path / "root", [1, 2], latest=2)
    os.symlink(outside, root / TRASH_NAME)
    before, old = fingerprint(outside), snapshot(root)["step_2"]
    owner = claim_root(root)
    save_dir = begin_save(root, 2, owner_token=owner.token)  # a save of step 2 again
    (save_dir / "__0_0.distcp").write_bytes(b"new" * 10)
    (save_dir / ".metadata").write_bytes(b"dcp-metadata")
    publish_save(root, save_dir, 2, owner_token=owner.token)
    assert fingerprint(outside) == before
    assert (root / "step_2" / "__0_0.distcp").read_bytes() == b"new" * 10
    (aside,) = root.glob(".kf-replaced.step_2.*")  # the trash was refused: set aside, kept
    assert tree_listing(aside) == old
    with pytest.raises(RetentionError, match="not a real directory"):
        collect_garbage(root, KEEP2)
    assert fingerprint(outside) == before and tree_listing(aside) == old
    (root / TRASH_NAME).unlink()
    collect_garbage(root, KEEP2)  # with a real trash, the old copy goes
    assert not list(root.glob(".kf-replaced.*")) and _steps(root) == [1, 2]


def test_lock_file_that_is_a_symlink_stops_gc(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    root = make_root(tmp_path / "root", [1, 2, 3], latest=3)
    os.symlink(target, root / LOCK_NAME)
    with pytest.raises(RetentionError, match="cannot open the lock file"):
        collect_garbage(root, KEEP2)
    assert target.read_text() == "root:x:0:0\n" and _steps(root) == [1, 2, 3]


def test_corrupt_metadata_victim_follows_the_rules(tmp_path: Path) -> None:
    root = make_root(tmp_path, [2, 3], latest=3)
    make_checkpoint(root, 1, metadata="{broken")
    result = collect_garbage(root, KEEP2)
    assert [d.step for d in result.applied.deleted] == [1]  # type: ignore[union-attr]


def test_leftover_trash_is_finished_first(tmp_path: Path) -> None:
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"keep me")
    root = make_root(tmp_path / "root", [1, 2], latest=2)
    trash = root / TRASH_NAME
    trash.mkdir()
    make_checkpoint(trash, 5)
    (trash / "step_5").rename(trash / "step_5.dead")
    os.symlink(outside, trash / "step_6.link")
    (trash / "loose-file").write_text("x")
    result = collect_garbage(root, CheckpointConfig(keep_last_n=5))
    assert result.applied is not None and result.applied.trash_cleared == 3
    assert result.applied.deleted == () and not trash.exists()
    assert outside.read_bytes() == b"keep me" and _steps(root) == [1, 2]


def test_permissions_as_an_unprivileged_user(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = base / "ckpt"

        def scenario() -> tuple[ApplyResult | None, list[str]]:
            make_root(root, [100, 200, 300], latest=300)
            victim = root / "step_100"
            locked = victim / "locked"
            locked.mkdir()
            (locked / "f").write_bytes(b"x")
            locked.chmod(0o000)
            read_only = victim / "ro"
            read_only.mkdir()
            (read_only / "g").write_bytes(b"y")
            read_only.chmod(0o500)
            (victim / "__0_0.distcp").chmod(0o000)
            victim.chmod(0o555)  # moving it into the trash needs its own "w" bit
            result = collect_garbage(root, CheckpointConfig(keep_last_n=1))
            return result.applied, sorted(os.listdir(root))

        applied, left = as_unprivileged(scenario)
    assert applied is not None and applied.ok
    assert [d.step for d in applied.deleted] == [100, 200]
    assert left == [".kf-ckpt.lock", "latest", "step_300"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files another user owns")
def test_victims_of_another_owner_fail_and_stay_whole(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = make_root(base / "ckpt", [1, 2, 3], latest=3)  # owned by root
        root.chmod(0o777)
        before = snapshot(root)
        applied = as_unprivileged(lambda: collect_garbage(root, KEEP2).applied)
        assert applied is not None and not applied.ok
        assert [f.step for f in applied.failed] == [1]
        assert "Permission denied" in applied.failed[0].reason
        assert "untouched" in applied.failed[0].reason
        assert snapshot(root) == before


KILL_SCRIPT = """
    import sys
    from kempnerforge.checkpoint.store.collect import collect_garbage
    from kempnerforge.config.checkpoint import CheckpointConfig
    collect_garbage(sys.argv[1], CheckpointConfig(keep_last_n=4))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["first_rename", "first_removal"])
def test_sigkill_mid_apply_leaves_no_partial_checkpoint(tmp_path: Path, kill_when: str) -> None:
    steps = list(range(10, 250, 10))
    kept = steps[-4:]
    make_root(tmp_path, steps, latest=kept[-1], files=60, size=8)
    victims = {f"step_{s}" for s in steps[:-4]}
    before = snapshot(tmp_path)
    trash = tmp_path / TRASH_NAME
    proc = subprocess.Popen([*_script(KILL_SCRIPT), str(tmp_path)])
    try:
        while proc.poll() is None:
            in_trash = os.listdir(trash) if trash.exists() else []
            if kill_when == "first_rename" and in_trash:
                break
            moved_all = bool(in_trash) and not victims & set(os.listdir(tmp_path))
            if kill_when == "first_removal" and moved_all and len(in_trash) < len(victims):
                break  # every victim is in the trash and the first is already removed
            time.sleep(0.0002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "gc finished before it could be killed"
    left_in_trash = os.listdir(trash) if trash.exists() else []
    now = snapshot(tmp_path)
    assert left_in_trash or victims & set(now), "the kill did not land in the middle of the apply"
    for name, listing in now.items():
        if name.startswith("step_"):
            assert listing == before[name], f"{name} is partially deleted"
    assert {f"step_{s}" for s in kept} <= set(now)
    result = collect_garbage(tmp_path, CheckpointConfig(keep_last_n=4)).applied
    assert result is not None and result.ok
    assert result.trash_cleared == len(left_in_trash)
    assert not trash.exists() and _steps(tmp_path) == kept
    assert all(snapshot(tmp_path)[f"step_{s}"] == before[f"step_{s}"] for s in kept)


CONCURRENT_SCRIPT = """
    import json, pathlib, sys, time
    from kempnerforge.checkpoint.store.catalog import scan
    from kempnerforge.checkpoint.store.collect import collect_garbage
    from kempnerforge.checkpoint.store.apply import apply_plan
    from kempnerforge.checkpoint.store.retention import plan_retention
    from kempnerforge.config.checkpoint import CheckpointConfig
    root, go, out, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    config = CheckpointConfig(keep_last_n=3)
    plan = plan_retention(scan(root), config)  # a view that may be stale by the time it applies
    pathlib.Path(out + ".ready").write_text("ready")
    while not go.exists():
        time.sleep(0.001)
    if mode == "collect":
        result = collect_garbage(root, config, wait_lock_s=120)
        plan, applied = result.plan, result.applied
    else:
        applied = apply_plan(plan, wait_lock_s=120)
    pathlib.Path(out).write_text(json.dumps({
        "kept": [d.step for d in plan.to_keep],
        "deleted": [d.step for d in applied.deleted],
        "vanished": [d.step for d in applied.vanished],
        "failed": [f.reason for f in applied.failed],
    }))
"""


@pytest.mark.slow
def test_two_concurrent_applies_lose_nothing_either_keeps(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    steps = list(range(100, 3100, 100))
    make_root(root, steps, latest=3000, files=30, size=8)
    make_checkpoint(root, 50, milestone=True)
    make_checkpoint(root, 3100, complete=False)  # in flight
    before = snapshot(root)
    go = tmp_path / "go"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    with hold_lock(root):
        procs = [
            subprocess.Popen([*_script(CONCURRENT_SCRIPT), str(root), str(go), str(out), mode])
            for out, mode in zip(outs, ["apply", "collect"], strict=True)
        ]
        try:
            while not all(Path(f"{out}.ready").exists() for out in outs):
                assert all(p.poll() is None for p in procs), "a gc process died early"
                time.sleep(0.005)
            go.write_text("go")
            assert _steps(root) == sorted([50, *steps, 3100])  # we hold the lock: nothing goes
        except BaseException:
            for p in procs:
                p.kill()
            raise
    for p in procs:
        assert p.wait(timeout=120) == 0
    results = [json.loads(out.read_text()) for out in outs]
    assert all(r["failed"] == [] for r in results)
    kept = set(results[0]["kept"]) | set(results[1]["kept"])
    assert kept == {50, 2800, 2900, 3000, 3100}
    deleted = [set(r["deleted"]) for r in results]
    assert not deleted[0] & deleted[1]  # each victim went exactly once
    assert deleted[0] | deleted[1] == set(steps) - kept
    assert set(_steps(root)) == kept
    now = snapshot(root)
    assert all(now[f"step_{s}"] == before[f"step_{s}"] for s in kept)
    assert not (root / TRASH_NAME).exists()
