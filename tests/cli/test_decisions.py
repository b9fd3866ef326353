"""How ``kf-ckpt`` words retention decisions: every fact a decision carries reaches its detail,
and one save reads the same age in ``ls`` and in gc's detail (one age formatter)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store._pending import PendingDir
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.layout import PendingKind, inflight_dir_name, replaced_dir_name
from kempnerforge.checkpoint.store.lease import Lease, LeaseState, LeaseVerdict
from kempnerforge.checkpoint.store.pins import Pin
from kempnerforge.checkpoint.store.retention import Reason, RetentionPlan, plan_retention
from kempnerforge.cli.render import human_age, human_duration
from kempnerforge.cli.render._decisions import decision_detail, lease_text, ordinal
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from tests._cli import invoke, run_installed
from tests.checkpoint._trees import decision_for, make_checkpoint, make_root, set_mtime
from tests.checkpoint.store.test_retention import (
    CASES,
    GRACE_CASES,
    NOW_S,
    ROOT,
    GraceCase,
    catalog,
    grace_plan,
    info,
)

WRITER = Lease(step=15, owner="0123456789abcdef", host="node-a", pid=4242)


def _details(plan: RetentionPlan) -> dict[int, str]:
    return {d.step: decision_detail(d) for d in plan.decisions}


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (10, "10th"), (11, "11th"), (12, "12th"),
     (13, "13th"), (21, "21st"), (22, "22nd"), (23, "23rd"), (101, "101st"), (111, "111th"),
     (112, "112th"), (1002, "1002nd")],
)  # fmt: skip
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


@pytest.mark.parametrize(
    ("age_s", "text"),
    [(0.0, "0 s ago"), (59.9, "59 s ago"), (60.0, "1 min ago"), (90.0, "1 min ago"),
     (3599.0, "59 min ago"), (3600.0, "1 h ago"), (47 * 3600.0, "47 h ago"),
     (48 * 3600.0, "2 d ago"), (-1.0, "in the future"), (math.nan, "at an unknown time")],
)  # fmt: skip
def test_the_one_age_formatter(age_s: float, text: str) -> None:
    assert human_age(age_s) == text
    if age_s >= 0:
        assert human_age(age_s) == f"{human_duration(age_s)} ago"


def test_every_reason_of_the_retention_tables_is_worded() -> None:
    for case in CASES:
        window = DynamicCheckpointWindow(*case.window) if case.window else None
        config = CheckpointConfig(keep_last_n=case.keep_last_n, dyn_ckpt_window=window)
        plan = plan_retention(catalog(*case.checkpoints, skipped=case.skipped), config)
        assert all(decision_detail(d) for d in plan.decisions), case.id
    plan = plan_retention(catalog(*CASES[0].checkpoints), None)
    assert set(_details(plan).values()) == {
        "no retention policy is known for this root; nothing is deleted"
    }


def test_the_detail_of_each_reason_says_its_facts() -> None:
    pinned = dataclasses.replace(info(30), pin=Pin(note="best eval loss 2.31"))
    corrupt = dataclasses.replace(
        info(60, complete=False), corrupt=True, incomplete_reason="short shard __0_0.distcp"
    )
    cat = catalog(
        info(0, milestone=True),  # recorded flag, no window
        info(4),  # the window's milestone
        info(10),
        info(20),
        pinned,
        dataclasses.replace(info(35), pin=Pin()),  # a pin without a note
        info(40, scan_error="cannot read step_40/: Permission denied"),
        info(50),
        corrupt,
        info(70),
        info(80, latest=True),
        info(90, complete=False),
    )
    window = DynamicCheckpointWindow(start=4, stop=8)
    plan = plan_retention(cat, CheckpointConfig(keep_last_n=3, dyn_ckpt_window=window))
    assert _details(plan) == {
        0: "dynamic milestone recorded in metadata.json; complete",
        4: "dynamic milestone of window [4, 8] (power2); complete",
        10: "older than the newest 3 complete",
        20: "older than the newest 3 complete",
        30: "pinned: best eval loss 2.31; complete",
        35: "pinned; complete",
        40: "cannot read step_40/: Permission denied; kept until it can be judged",
        50: "3rd newest of 3",
        60: "corrupt (short shard __0_0.distcp); never deleted automatically: remove it by hand "
        "once it is no longer needed as evidence",
        70: "2nd newest of 3",
        80: "target of latest; complete",
        90: "incomplete (no .metadata), newer than step 80: a save may be writing it",
    }
    sparse = plan_retention(catalog(info(1), info(2), info(3)), CheckpointConfig(keep_last_n=0))
    assert _details(sparse) == {
        1: "keep_last_n=0 keeps every checkpoint",
        2: "keep_last_n=0 keeps every checkpoint",
        3: "the newest complete checkpoint",
    }
    first = plan_retention(catalog(info(5, complete=False)), CheckpointConfig())
    assert _details(first) == {
        5: "incomplete (no .metadata), no complete checkpoint yet: a save may be writing it"
    }
    abandoned = plan_retention(catalog(info(5, complete=False), info(9)), CheckpointConfig())
    assert _details(abandoned)[5] == "incomplete (no .metadata), older than step 9"


@pytest.mark.parametrize("case", GRACE_CASES, ids=[c.id for c in GRACE_CASES])
def test_in_flight_grace_details(case: GraceCase) -> None:
    detail = decision_detail(decision_for(grace_plan(case), 600))
    assert detail.startswith("incomplete (no .metadata), ") and case.detail in detail


LEASE_TEXTS = [
    (LeaseVerdict(state=LeaseState.running, lease=WRITER), "pid 4242 on node-a is running"),
    (LeaseVerdict(state=LeaseState.exited, lease=WRITER), "pid 4242 on node-a has exited"),
    (
        LeaseVerdict(state=LeaseState.rebooted, lease=WRITER),
        "node-a rebooted since pid 4242 on node-a wrote it",
    ),
    (
        LeaseVerdict(state=LeaseState.beating, lease=WRITER, heartbeat_age_s=12.5),
        "pid 4242 on node-a: heartbeat 12 s ago",
    ),
    (
        LeaseVerdict(state=LeaseState.stale, lease=WRITER, heartbeat_age_s=420.0),
        "pid 4242 on node-a: last heartbeat 7 min ago",
    ),
    (
        LeaseVerdict(state=LeaseState.ahead, lease=WRITER, heartbeat_age_s=-86400.0),
        "pid 4242 on node-a: heartbeat dated 24 h ahead of the file system's clock",
    ),
    (
        LeaseVerdict(state=LeaseState.heartbeat_unreadable, lease=WRITER),
        "pid 4242 on node-a: heartbeat time unreadable",
    ),
    (LeaseVerdict(state=LeaseState.missing), "no .kf-lease"),
    (LeaseVerdict(state=LeaseState.corrupt), "corrupt .kf-lease"),
    (
        LeaseVerdict(state=LeaseState.unreadable, error="Permission denied"),
        "cannot read .kf-lease: Permission denied",
    ),
]


@pytest.mark.parametrize(
    ("verdict", "text"), LEASE_TEXTS, ids=[v.state.value for v, _ in LEASE_TEXTS]
)
def test_lease_text_names_the_writer_and_its_state(verdict: LeaseVerdict, text: str) -> None:
    assert lease_text(verdict) == text


def _pending(
    step: int, kind: PendingKind, *, writer: LeaseVerdict | None, idle_s: float, complete: bool
) -> PendingDir:
    make_name = inflight_dir_name if kind is PendingKind.save else replaced_dir_name
    return PendingDir(
        step=step,
        path=ROOT / make_name(step, f"{step:012x}"),
        kind=kind,
        complete=complete,
        size_bytes=10,
        file_count=1,
        mtime_s=NOW_S - idle_s,
        writer=writer,
    )


def test_pending_details_say_the_kind_and_the_writers_state() -> None:
    save, aside = PendingKind.save, PendingKind.replaced
    live = LeaseVerdict(state=LeaseState.running, lease=WRITER)
    gone = LeaseVerdict(state=LeaseState.exited, lease=WRITER)
    none = LeaseVerdict(state=LeaseState.missing)
    pending = (
        _pending(10, aside, writer=None, idle_s=5, complete=True),  # step_10 exists
        _pending(11, aside, writer=None, idle_s=5, complete=True),  # step_11 does not
        _pending(15, save, writer=live, idle_s=5, complete=False),
        _pending(16, save, writer=gone, idle_s=5, complete=True),
        _pending(17, save, writer=gone, idle_s=5, complete=False),
        _pending(18, save, writer=none, idle_s=150, complete=False),
        _pending(19, save, writer=none, idle_s=3 * 3600, complete=False),
    )
    cat = dataclasses.replace(catalog(info(10), scanned_at_s=NOW_S), pending=pending)
    plan = plan_retention(cat, CheckpointConfig(keep_last_n=1))
    details = {(d.step, str(d.action)): decision_detail(d) for d in plan.pending}
    assert details == {
        (10, "delete"): "old copy of step 10 set aside while a save replaced it; step 10 is newer",
        (11, "keep"): "old copy of step 11 set aside while a save replaced it; the next gc or "
        "run puts it back",
        (15, "keep"): "save of step 15 in flight: pid 4242 on node-a is running",
        (16, "delete"): "complete but never published; writer gone: pid 4242 on node-a has exited",
        (17, "delete"): "incomplete; writer gone: pid 4242 on node-a has exited",
        (18, "keep"): "no .kf-lease, written 2 min ago; a save may still write it",
        (19, "delete"): "incomplete; no .kf-lease, written 3 h ago",
    }
    # Without a policy nothing is deleted; each detail still says what was found.
    unpolicied = plan_retention(cat, None)
    assert {d.reason for d in unpolicied.pending} == {Reason.in_flight, Reason.no_policy}
    assert [decision_detail(d) for d in unpolicied.pending] == list(details.values())


def test_ls_and_gc_give_one_save_the_same_age(tmp_path: Path) -> None:
    # Ninety seconds: "1 min ago" in ls's age column, formerly "written 90 s ago" in gc's detail.
    root = make_root(tmp_path / "ckpt", [100, 200, 300], latest=300)
    written_s = time.time() - 90
    make_checkpoint(root, 250, complete=False, mtime_s=written_s)  # below the newest complete
    save = root / inflight_dir_name(350, "0a0b0c0d0e0f")  # a save without a lease, in flight
    save.mkdir()
    (save / "__0_0.distcp").write_bytes(b"shard")
    set_mtime(save, written_s)
    policy = ("--set", "checkpoint.keep_last_n=2")
    table = invoke("ls", str(root), *policy, now_s=None)
    assert table.exit_code == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:] if line.strip()}
    assert "1 min ago" in rows["250"]
    assert "1 min ago" in rows["350"]
    assert "no .kf-lease, written 1 min ago; a save may still write it" in rows["350"]
    listed = json.loads(invoke("ls", str(root), *policy, "--json", now_s=None).stdout)
    (ls_250,) = [c for c in listed["checkpoints"] if c["step"] == 250]
    done = run_installed("gc", str(root), "--keep-last-n", "2", "--dry-run", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (gc_250,) = [d for d in json.loads(done.stdout)["decisions"] if d["step"] == 250]
    expected = "incomplete (no DCP .metadata), written 1 min ago; a save may still be writing it"
    assert gc_250["detail"] == ls_250["gc_detail"] == expected
    assert gc_250["reason"] == ls_250["gc_reason"] == "in_flight"
    (pending,) = listed["in_flight"]
    assert pending["gc_detail"] == "no .kf-lease, written 1 min ago; a save may still write it"
    assert (pending["writer_alive"], pending["lease"], pending["status"]) == (
        None,
        None,
        "in-flight",
    )
    assert scan(root).pending[0].writer == LeaseVerdict(state=LeaseState.missing)
