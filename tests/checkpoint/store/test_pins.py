"""Pins: the retention rule (pure tables), the pin file on disk, the lock, and pin racing gc."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage, hold_lock
from kempnerforge.checkpoint.store.layout import PIN_NAME
from kempnerforge.checkpoint.store.pins import Pin, pin_checkpoint, read_pin, unpin_checkpoint
from kempnerforge.checkpoint.store.retention import Action, Reason, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.errors import CheckpointNotFoundError, CheckpointRootError, LockBusyError
from tests.checkpoint._trees import decision_for, make_checkpoint, make_root, set_mtime
from tests.checkpoint.store.test_retention import catalog, info

K, D = Action.keep, Action.delete
PIN = Pin(note="best eval loss 2.31")


def pinned(step: int, **kw: object) -> object:
    return dataclasses.replace(info(step, **kw), pin=PIN)  # type: ignore[arg-type]


PIN_CASES = {
    # window [0, 2] power2: 0, 1, 2 are milestones; a pin on a milestone reports the milestone.
    "pinned-milestone": (
        [pinned(1), info(2), info(10), info(20, latest=True)],
        dict(keep_last_n=1, window=(0, 2)),
        {1: (K, Reason.milestone), 2: (K, Reason.milestone), 10: (D, Reason.beyond_keep_last_n),
         20: (K, Reason.latest)},
    ),
    "pinned-latest": (
        [info(10), info(20), pinned(30, latest=True)],
        dict(keep_last_n=1),
        # The latest target is the newest: its pin uses no slot, so 20 takes the one slot.
        {10: (D, Reason.beyond_keep_last_n), 20: (K, Reason.within_keep_last_n),
         30: (K, Reason.latest)},
    ),
    "pinned-beyond-keep-last-n-uses-no-slot": (
        [pinned(10), info(20), pinned(30), info(40), info(50), info(60, latest=True)],
        dict(keep_last_n=2),
        {10: (K, Reason.pinned), 20: (D, Reason.beyond_keep_last_n), 30: (K, Reason.pinned),
         40: (D, Reason.beyond_keep_last_n), 50: (K, Reason.within_keep_last_n),
         60: (K, Reason.latest)},
    ),
    "pinned-incomplete-is-kept-before-the-abandoned-rule": (
        [dataclasses.replace(info(10, complete=False), pin=PIN), info(20, latest=True)],
        dict(keep_last_n=1),
        {10: (K, Reason.pinned), 20: (K, Reason.latest)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", PIN_CASES, ids=list(PIN_CASES))
def test_retention_table_with_pins(case: str) -> None:
    infos, settings, expected = PIN_CASES[case]
    window = settings.get("window")
    config = CheckpointConfig(
        keep_last_n=settings["keep_last_n"],  # type: ignore[arg-type]
        dyn_ckpt_window=None if window is None else DynamicCheckpointWindow(*window),  # type: ignore[misc]
    )
    plan = plan_retention(catalog(*infos), config)  # type: ignore[arg-type]
    assert {d.step: (d.action, d.reason) for d in plan.decisions} == expected
    pins = {i.step for i in infos if i.pin is not None}  # type: ignore[attr-defined]
    for d in plan.decisions:
        assert d.pin_note == ("best eval loss 2.31" if d.step in pins else None)


def test_unpinned_checkpoint_is_collected_by_the_next_gc(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [10, 20, 30, 40], latest=40)
    config = CheckpointConfig(keep_last_n=1)
    pin_checkpoint(root, 10, note="paper table 2")
    first = collect_garbage(root, config)
    assert decision_for(first.plan, 10).reason is Reason.pinned
    assert decision_for(first.plan, 10).pin_note == "paper table 2"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_10", "step_40"]
    assert unpin_checkpoint(root, 10).removed == dataclasses.replace(
        read_pin_fields(first), note="paper table 2"
    )
    second = collect_garbage(root, config)
    assert [d.step for d in second.applied.deleted] == [10]  # type: ignore[union-attr]
    assert sorted(p.name for p in root.glob("step_*")) == ["step_40"]


def read_pin_fields(result: object) -> Pin:
    info = result.catalog.get(10)  # type: ignore[attr-defined]
    assert info is not None and info.pin is not None
    return info.pin


def test_pin_file_records_note_time_user_and_keeps_the_checkpoint_age(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [10, 20], latest=20)
    set_mtime(root / "step_10", 1_600_000_000.0)
    before = scan(root).get(10)
    result = pin_checkpoint(root, 10, note="  best\n eval  loss ")
    doc = json.loads((root / "step_10" / PIN_NAME).read_text())
    assert doc["format"] == "kf-ckpt-pin" and doc["format_version"] == 1
    assert (doc["step"], doc["note"]) == (10, "best eval loss")
    assert doc["user"] and doc["host"] and doc["pinned_at"].endswith("+00:00")
    assert result.previous is None and result.pin.note == "best eval loss"
    after = scan(root).get(10)  # the scan cache sees the new pin (the directory's ctime moved)
    assert after is not None and before is not None
    assert after.pin == result.pin and before.pin is None
    assert after.mtime_s == before.mtime_s == 1_600_000_000.0
    # Pinning again updates the time and keeps the note unless a new one is given.
    again = pin_checkpoint(root, 10)
    assert again.previous == result.pin and again.pin.note == "best eval loss"
    assert pin_checkpoint(root, 10, note="").pin.note == ""
    # Unpinning twice: the second is a no-op.
    assert unpin_checkpoint(root, 10).removed is not None
    assert unpin_checkpoint(root, 10).removed is None
    assert not (root / "step_10" / PIN_NAME).exists()
    assert scan(root).get(10).pin is None  # type: ignore[union-attr]


def test_pin_refuses_missing_incomplete_and_non_directory_checkpoints(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [10], latest=10)
    make_checkpoint(root, 20, complete=False)
    (root / "step_30").write_text("not a directory")
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint for step 99 under "):
        pin_checkpoint(root, 99)
    with pytest.raises(CheckpointNotFoundError, match=r"step_20 is incomplete \(no DCP"):
        pin_checkpoint(root, 20)
    with pytest.raises(CheckpointNotFoundError, match="step_30 is not a directory"):
        pin_checkpoint(root, 30)
    with pytest.raises(CheckpointRootError, match="does not exist"):
        pin_checkpoint(tmp_path / "nowhere", 10)
    with pytest.raises(CheckpointNotFoundError):
        unpin_checkpoint(root, 99)
    assert not any(root.glob(f"*/{PIN_NAME}"))


def test_pin_waits_for_the_lock_then_gives_up(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [10, 20], latest=20)
    with hold_lock(root):
        with pytest.raises(LockBusyError, match="is held by another process"):
            pin_checkpoint(root, 10, wait_lock_s=0.1)
        with pytest.raises(LockBusyError):
            unpin_checkpoint(root, 10)
    assert not (root / "step_10" / PIN_NAME).exists()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"\xff\xfe", None],
    ids=["corrupt", "list", "bytes", "link"],
)
def test_an_unreadable_pin_file_still_pins(tmp_path: Path, content: bytes | None) -> None:
    root = make_root(tmp_path / "ckpt", [10, 20, 30], latest=30)
    pin_path = root / "step_10" / PIN_NAME
    if content is None:
        os.symlink("/etc/passwd", pin_path)
    else:
        pin_path.write_bytes(content)
    pin, warning = read_pin(root / "step_10")
    assert pin == Pin() and warning is not None and "counts as pinned" in warning
    result = collect_garbage(root, CheckpointConfig(keep_last_n=1))
    assert decision_for(result.plan, 10).reason is Reason.pinned
    assert decision_for(result.plan, 10).pin_note is None  # an unreadable pin has no note
    assert [d.step for d in result.applied.deleted] == [20]  # type: ignore[union-attr]
    assert any("counts as pinned" in w for w in result.catalog.get(10).warnings)  # type: ignore[union-attr]


_RACE = """
import sys
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.pins import pin_checkpoint
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import CheckpointNotFoundError
what, root = sys.argv[1], sys.argv[2]
sys.stdin.readline()  # both processes start together
if what == "gc":
    collect_garbage(root, CheckpointConfig(keep_last_n=1), wait_lock_s=30)
    print("gc")
else:
    try:
        pin_checkpoint(root, 10, note="race", wait_lock_s=30)
        print("pinned")
    except CheckpointNotFoundError:
        print("missing")
"""


def test_pin_racing_gc_in_two_processes_never_loses_a_pinned_checkpoint(tmp_path: Path) -> None:
    outcomes = set()
    for attempt in range(6):
        root = make_root(tmp_path / f"ckpt{attempt}", [10, 20, 30], latest=30)
        procs = {
            what: subprocess.Popen(
                [sys.executable, "-c", _RACE, what, str(root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for what in (("gc", "pin") if attempt % 2 else ("pin", "gc"))
        }
        for proc in procs.values():
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        results = {what: proc.communicate(timeout=60) for what, proc in procs.items()}
        assert all(p.returncode == 0 for p in procs.values()), results
        outcome = results["pin"][0].strip()
        outcomes.add(outcome)
        if outcome == "pinned":  # the pin won: gc planned after it and kept the checkpoint
            assert (root / "step_10" / PIN_NAME).is_file()
        else:  # gc won: the pin failed cleanly, nothing half-written is left
            assert outcome == "missing" and not (root / "step_10").exists()
        assert not (root / "step_20").exists() and (root / "step_30").is_dir()
    assert outcomes <= {"pinned", "missing"}
