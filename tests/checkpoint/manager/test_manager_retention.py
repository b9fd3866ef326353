"""Retention after saves: the store core's gc, run by the manager; a held lock skips a round."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.collect import hold_lock
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import list_step_dirs
from kempnerforge.config.checkpoint import DynamicCheckpointWindow
from tests.checkpoint._models import build, make_config, train_step

MILESTONES = [0, 1, 2, 4, 8]  # power2 over [0, 8]


def _kf_ckpt() -> str:
    found = shutil.which("kf-ckpt", path=str(Path(sys.executable).parent))
    assert found, "the kf-ckpt script is not installed in the venv"
    return found


def _steps(root: Path) -> list[int]:
    return [step for step, _ in list_step_dirs(root)]


@pytest.mark.parametrize("mode", ["disabled", "async"])
def test_retention_keeps_milestones_and_the_newest_interval_checkpoints(
    tmp_path: Path, mode: str
) -> None:
    window = DynamicCheckpointWindow(start=0, stop=8)
    config = make_config(
        tmp_path, interval=10, keep_last_n=2, dyn_ckpt_window=window, async_mode=mode
    )
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(config, model, optimizer)
    saved = []
    for step in range(41):
        if config.should_save(step):
            train_step(model, optimizer, scheduler)
            manager.save(step)
            saved.append(step)
            # Interval checkpoints beyond the newest keep_last_n never pile up (async: one behind).
            interval_kept = [s for s in _steps(tmp_path) if s not in MILESTONES]
            assert len(interval_kept) <= 2 + (mode == "async")
    manager.close()

    assert saved == [*MILESTONES, 10, 20, 30, 40]
    assert _steps(tmp_path) == [*MILESTONES, 30, 40]
    assert read_latest(tmp_path).step == 40
    milestone_meta = json.loads((tmp_path / "step_4" / "metadata.json").read_text())
    assert milestone_meta["dynamic_milestone"] is True


def test_a_held_lock_skips_retention_without_blocking_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path, keep_last_n=1), model, optimizer)
    manager.save(1)

    with (
        hold_lock(tmp_path),  # as `kf-ckpt gc` would, from another process
        caplog.at_level(logging.WARNING, logger="kempnerforge.checkpoint"),
    ):
        manager.save(2)
        manager.save(3)

    assert _steps(tmp_path) == [1, 2, 3]  # nothing deleted, nothing blocked
    assert read_latest(tmp_path).step == 3
    assert caplog.text.count("retention skipped this round") == 2

    manager.save(4)
    assert _steps(tmp_path) == [4]


def test_kf_ckpt_ls_agrees_with_what_the_manager_kept(tmp_path: Path) -> None:
    window = DynamicCheckpointWindow(start=0, stop=4)
    config = make_config(tmp_path, interval=5, keep_last_n=1, dyn_ckpt_window=window)
    model, optimizer, _ = build(0)
    manager = CheckpointManager(config, model, optimizer)
    for step in range(16):
        if config.should_save(step):
            manager.save(step, tokens_seen=step * 10)

    result = subprocess.run(
        [_kf_ckpt(), "ls", str(tmp_path), "--json"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["config"]["source"] == "recorded"  # the manager's metadata.json
    assert listing["latest"] == 15
    rows = [(c["step"], c["tokens_seen"], c["gc_action"]) for c in listing["checkpoints"]]
    assert rows == [
        (0, 0, "keep"),
        (1, 10, "keep"),
        (2, 20, "keep"),
        (4, 40, "keep"),
        (15, 150, "keep"),
    ]
