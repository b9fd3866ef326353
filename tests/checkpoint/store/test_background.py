"""A training process's retention: the light scan, renames on the caller's thread, the emptier."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kempnerforge.checkpoint.store._light_scan import scan_light
from kempnerforge.checkpoint.store.background import BackgroundRetention, retire_victims
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.files import update_latest
from kempnerforge.checkpoint.store.layout import TRASH_NAME, list_step_dirs
from kempnerforge.checkpoint.store.pins import pin_checkpoint
from kempnerforge.checkpoint.store.retention import RetentionPlan, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._trees import add_entries, make_checkpoint, make_root

OLD_S = 1_600_000_000.0  # an mtime far outside retention's in-flight grace period
EMPTIER = "kf-ckpt trash emptier"

_recording: tuple[int, list[tuple[str, Any]]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("open", "os.listdir", "os.scandir") and _recording is not None:
        thread, calls = _recording
        if threading.get_ident() == thread:
            calls.append((event, args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside _file_calls


@contextmanager
def _file_calls() -> Iterator[list[tuple[str, Any]]]:
    """Record the files this thread opens and the directories it lists meanwhile."""
    global _recording
    calls: list[tuple[str, Any]] = []
    _recording = (threading.get_ident(), calls)
    try:
        yield calls
    finally:
        _recording = None


def _listed(calls: list[tuple[str, Any]]) -> list[Any]:
    return [arg for event, arg in calls if event != "open"]


def _manifests(calls: list[tuple[str, Any]]) -> list[str]:
    return [str(arg) for event, arg in calls if event == "open" and str(arg).endswith(".metadata")]


def _view(plan: RetentionPlan) -> list[tuple[int, str, str]]:
    return [(d.step, d.action.value, d.reason.value) for d in plan.decisions]


def _steps(root: Path) -> list[int]:
    return [step for step, _ in list_step_dirs(root)]


def _emptiers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(EMPTIER)]


def test_light_scan_plans_exactly_as_the_full_scan(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 100, mtime_s=OLD_S)
    make_checkpoint(tmp_path, 150, mtime_s=OLD_S)
    make_checkpoint(tmp_path, 200, milestone=True, mtime_s=OLD_S)
    (make_checkpoint(tmp_path, 250) / ".metadata").write_bytes(b"")  # corrupt: empty manifest
    make_checkpoint(tmp_path, 300, complete=False, mtime_s=OLD_S)  # abandoned
    make_checkpoint(tmp_path, 400, pp_stages=2, mtime_s=OLD_S)
    make_checkpoint(tmp_path, 450, pp_stages=2, complete=False, mtime_s=OLD_S)
    make_checkpoint(tmp_path, 500, complete=False)  # written just now: in flight
    make_checkpoint(tmp_path, 600, files=40)
    make_checkpoint(tmp_path, 700, complete=False, mtime_s=OLD_S)  # newer than the newest
    (tmp_path / "step_800").symlink_to("step_600")  # never a checkpoint
    update_latest(tmp_path, 400)
    pin_checkpoint(tmp_path, 150, note="best eval loss")
    config = CheckpointConfig(keep_last_n=1)

    light, full = scan_light(tmp_path), scan(tmp_path, use_cache=False)

    assert _view(plan_retention(light, config)) == _view(plan_retention(full, config))
    assert _view(plan_retention(light, config)) == [
        (100, "delete", "beyond_keep_last_n"),
        (150, "keep", "pinned"),
        (200, "keep", "milestone"),
        (250, "keep", "corrupt"),
        (300, "delete", "abandoned_incomplete"),
        (400, "keep", "latest"),
        (450, "delete", "abandoned_incomplete"),
        (500, "keep", "in_flight"),
        (600, "keep", "within_keep_last_n"),
        (700, "keep", "in_flight"),
    ]
    # Complete checkpoints are probed, not walked: no size; incomplete ones are walked.
    unsized = [c.step for c in light.checkpoints if not c.size_known]
    assert unsized == [100, 150, 200, 250, 400, 600]
    assert light.get(150).pin == full.get(150).pin  # type: ignore[union-attr]
    assert all(light.get(s).size_bytes == 0 for s in unsized)  # type: ignore[union-attr]
    assert light.get(300).size_bytes == full.get(300).size_bytes > 0  # type: ignore[union-attr]

    scan(tmp_path)  # a full scan (kf-ckpt ls) records the old complete ones in the cache
    cached = scan_light(tmp_path)
    assert [c.step for c in cached.checkpoints if not c.size_known] == [250, 600]  # not cached
    assert cached.get(100) == full.get(100)  # sizes and all, from the cache


def test_a_round_lists_no_checkpoint_and_leaves_the_files_to_the_caller(tmp_path: Path) -> None:
    make_root(tmp_path, range(1, 9), latest=8, files=40, mtime_s=OLD_S)
    leftover = make_checkpoint(tmp_path / TRASH_NAME, 0)  # an interrupted run's trash
    before = {step: sorted(os.listdir(tmp_path / f"step_{step}")) for step in range(1, 7)}

    with _file_calls() as calls:  # all known to pass the full check (see the next test)
        result = retire_victims(tmp_path, CheckpointConfig(keep_last_n=2), known_good=range(9))

    assert result.applied is not None
    assert [d.step for d in result.applied.in_trash] == [1, 2, 3, 4, 5, 6]
    assert result.applied.deleted == () and result.applied.bytes_freed == 0
    assert _steps(tmp_path) == [7, 8]
    # One listing (the root), and a bounded number of files opened per checkpoint: no walk.
    listed = _listed(calls)
    assert len(listed) == 1 and not isinstance(listed[0], str | bytes | os.PathLike)
    opened = [str(arg) for event, arg in calls if event == "open"]
    assert not any(".distcp" in name or ".metadata" in name for name in opened)
    assert len(opened) <= 3 * 8 + 4
    # Nothing removed on the caller's thread: the victims and the leftover are whole.
    trash = {name.split(".")[0]: name for name in os.listdir(tmp_path / TRASH_NAME)}
    assert sorted(trash) == [f"step_{s}" for s in range(7)]
    for step, names in before.items():
        assert sorted(os.listdir(tmp_path / TRASH_NAME / trash[f"step_{step}"])) == names
    assert leftover.is_dir()


def test_what_a_deletion_rests_on_is_verified_once_not_every_round(tmp_path: Path) -> None:
    make_root(tmp_path, range(1, 5), latest=4, mtime_s=OLD_S)
    retention = BackgroundRetention(tmp_path)
    config = CheckpointConfig(keep_last_n=1)

    with _file_calls() as first:  # a resumed run: nothing known yet, full checks
        retention.run_round(config)
    assert retention.wait(60)
    make_checkpoint(tmp_path, 5)
    update_latest(tmp_path, 5)
    with _file_calls() as second:  # step 5 just written by this process; step 4 checked before
        result = retention.run_round(config, saved_step=5)
    retention.close()

    assert sorted(Path(m).parent.name for m in _manifests(first)) == [
        f"step_{s}" for s in range(1, 5)
    ]
    assert result is not None and [d.step for d in result.applied.in_trash] == [4]  # type: ignore[union-attr]
    assert _manifests(second) == []
    assert len(_listed(second)) == 1  # the root only
    assert _steps(tmp_path) == [5]


def test_one_emptier_thread_empties_the_trash_and_close_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_root(tmp_path, range(1, 4), latest=3, mtime_s=OLD_S)
    for step in (1, 2):
        add_entries(tmp_path / f"step_{step}", 2000)
    retention = BackgroundRetention(tmp_path)
    config = CheckpointConfig(keep_last_n=1)

    with caplog.at_level(logging.INFO, logger="kempnerforge.checkpoint"):
        first = retention.run_round(config)
        make_checkpoint(tmp_path, 4, files=10)
        update_latest(tmp_path, 4)
        second = retention.run_round(config)  # the thread may still be deleting step_1, step_2
        running = len(_emptiers())
        assert retention.close() is True

    assert first is not None and second is not None
    assert [d.step for d in first.applied.in_trash] == [1, 2]  # type: ignore[union-attr]
    assert [d.step for d in second.applied.in_trash] == [3]  # type: ignore[union-attr]
    assert running <= 1
    assert _steps(tmp_path) == [4]
    assert not (tmp_path / TRASH_NAME).exists()
    assert not _emptiers()
    assert "retention moved step_1, step_2 into .kf-trash (size unknown)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # The finished thread let go of its slot: a later round starts a new one, which empties.
    make_checkpoint(tmp_path, 5, files=10)
    update_latest(tmp_path, 5)
    third = retention.run_round(config)
    assert retention.close() is True
    assert third is not None and [d.step for d in third.applied.in_trash] == [4]  # type: ignore[union-attr]
    assert _steps(tmp_path) == [5] and not (tmp_path / TRASH_NAME).exists()


def test_background_errors_are_logged_surfaced_at_the_next_round_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_root(tmp_path, [1], latest=1)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir(TRASH_NAME, dir_fd=fd)
    for _ in range(120):  # deeper than the recursion limit set below lets the emptier remove
        os.mkdir("d", dir_fd=fd)
        fd, parent = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    os.rename(tmp_path / "d", tmp_path / TRASH_NAME / "deep")
    retention = BackgroundRetention(tmp_path)
    config = CheckpointConfig(keep_last_n=1)

    limit = sys.getrecursionlimit()
    with caplog.at_level(logging.INFO, logger="kempnerforge.checkpoint"):
        sys.setrecursionlimit(len(inspect.stack()) + 150)  # room for this thread, not the tree
        try:
            assert retention.run_round(config) is not None  # leftovers: the emptier starts
            assert retention.wait(60)
            failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            caplog.clear()
            assert retention.run_round(config) is not None  # never raises into the caller
            surfaced = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert retention.wait(60)
        finally:
            sys.setrecursionlimit(limit)  # the cause goes away: the next retry succeeds
        assert "could not empty" in caplog.text  # the retry failed too, and said so
        retention.run_round(config)
        assert retention.close() is True

    trash = tmp_path / TRASH_NAME
    assert failed == [f"could not empty {trash}: .kf-trash/deep: nested too deep to remove"]
    assert surfaced == [
        f"the background removal of {trash} failed since the last save; "
        "retrying: .kf-trash/deep: nested too deep to remove"
    ]
    assert not trash.exists()
    assert _steps(tmp_path) == [1]


def test_a_gc_emptying_the_same_trash_meanwhile_is_harmless(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_root(tmp_path, range(1, 5), latest=4, mtime_s=OLD_S)
    for step in (1, 2, 3):
        add_entries(tmp_path / f"step_{step}", 3000)
    retention = BackgroundRetention(tmp_path)

    with caplog.at_level(logging.INFO, logger="kempnerforge.checkpoint"):
        retention.run_round(CheckpointConfig(keep_last_n=1))
        gc = collect_garbage(tmp_path, CheckpointConfig(keep_last_n=1))  # empties the trash too
        assert retention.close() is True

    assert gc.applied is not None and gc.applied.ok and gc.applied.warnings == ()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _steps(tmp_path) == [4]
    assert not (tmp_path / TRASH_NAME).exists()
