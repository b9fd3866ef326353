"""Pins and metrics from training code: CheckpointManager.pin/unpin and save(..., metrics=...)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.layout import PIN_NAME, list_step_dirs
from kempnerforge.errors import CheckpointNotFoundError
from tests.checkpoint._models import build, make_config, train_step


def _steps(root: Path) -> list[int]:
    return [step for step, _ in list_step_dirs(root)]


@pytest.mark.parametrize("mode", ["disabled", "async"])
def test_manager_keeps_the_best_checkpoint_pinned(tmp_path: Path, mode: str) -> None:
    """The "keep the best" loop of the guide: pin a new best, unpin the previous one."""
    config = make_config(tmp_path, interval=1, keep_last_n=1, async_mode=mode)
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(config, model, optimizer)
    losses = {1: 3.0, 2: 2.5, 3: 2.7, 4: 2.6, 5: 2.4, 6: 2.45, 7: 2.9}
    best_loss, best_step = math.inf, None
    for step, loss in losses.items():
        train_step(model, optimizer, scheduler)
        manager.save(step, metrics={"eval_loss": loss})
        if loss < best_loss:
            # Async: this pins the save still in flight; it is written once it is published.
            manager.pin(step, note=f"best eval loss {loss}")
            if best_step is not None:
                assert manager.unpin(best_step) is True
            best_loss, best_step = loss, step
        if step == 4:  # the pin of step 2 held step 2 through three retention rounds
            assert 2 in _steps(tmp_path)
    manager.close()

    assert _steps(tmp_path) == [5, 7]  # the best (pinned) and the newest (keep_last_n=1)
    pin = json.loads((tmp_path / "step_5" / PIN_NAME).read_text())
    assert pin["note"] == "best eval loss 2.4" and pin["step"] == 5
    assert not (tmp_path / "step_7" / PIN_NAME).exists()
    meta = json.loads((tmp_path / "step_5" / "metadata.json").read_text())
    assert meta["metrics"] == {"eval_loss": 2.4}
    # Unpinned, the old best goes at the next retention round.
    assert manager.unpin(5) is True and manager.unpin(5) is False
    manager = CheckpointManager(config, model, optimizer)
    manager.save(8)
    manager.close()
    assert _steps(tmp_path) == [8]


def test_pin_of_a_missing_step_raises_and_metrics_are_checked_before_writing(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, interval=1, keep_last_n=2)
    model, optimizer, _ = build(0)
    manager = CheckpointManager(config, model, optimizer)
    manager.save(1, metrics={"eval_loss": 2.0, "grad_norm": float("nan")})
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 9"):
        manager.pin(9)
    with pytest.raises(TypeError, match=r"metric 'eval_loss' must be a real number"):
        manager.save(2, metrics={"eval_loss": "low"})
    assert _steps(tmp_path) == [1]  # the refused save wrote nothing
    meta = json.loads((tmp_path / "step_1" / "metadata.json").read_text())
    assert meta["metrics"] == {"eval_loss": 2.0, "grad_norm": None}
    manager.close()
