"""CheckpointManager in one process: bit-exact resume, the on-disk contract, resolution, errors."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import DCP_METADATA
from kempnerforge.config.checkpoint import DynamicCheckpointWindow
from kempnerforge.config.loader import config_to_dict
from kempnerforge.errors import (
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    CorruptCheckpointError,
)
from tests.checkpoint._models import (
    CountingLoader,
    assert_bit_equal,
    build,
    make_config,
    snapshot,
    train_step,
)

LOGGER = "kempnerforge.checkpoint"


def _run(root: Path, steps: list[int], **config: object) -> CheckpointManager:
    """Train one model, saving at each of ``steps``; returns its manager."""
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(make_config(root, **config), model, optimizer)
    for step in range(1, max(steps) + 1):
        train_step(model, optimizer, scheduler)
        if step in steps:
            manager.save(step, tokens_seen=step * 4, scheduler=scheduler, extra={"at": step})
    return manager


def _fresh(root: Path, seed: int = 1, **config: object) -> CheckpointManager:
    model, optimizer, _ = build(seed)
    return CheckpointManager(make_config(root, **config), model, optimizer)


def test_restore_is_bit_exact_into_fresh_objects(tmp_path: Path) -> None:
    model, optimizer, scheduler = build(0)
    loader = CountingLoader()
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
        loader.advance(4)
    manager.save(3, tokens_seen=48, scheduler=scheduler, dataloader=loader, extra={"note": "hi"})
    expected = snapshot(model, optimizer)
    expected_scheduler = scheduler.state_dict()

    fresh_model, fresh_optimizer, fresh_scheduler = build(seed=1)
    fresh_loader = CountingLoader()
    assert not torch.equal(fresh_model.head.weight, model.head.weight)
    resumed = CheckpointManager(make_config(tmp_path), fresh_model, fresh_optimizer)
    result = resumed.load(scheduler=fresh_scheduler, dataloader=fresh_loader)

    assert result == (3, 48, {"note": "hi"})
    assert_bit_equal(snapshot(fresh_model, fresh_optimizer), expected)
    assert int(fresh_model.steps) == 3  # a buffer
    assert set(expected["optimizer"]["state"]) == {n for n, _ in model.named_parameters()}
    assert fresh_scheduler.state_dict() == expected_scheduler
    assert fresh_loader.position == 12


def test_continued_training_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    for step in range(1, 7):
        train_step(model, optimizer, scheduler)
        if step == 3:
            manager.save(step, scheduler=scheduler)
    uninterrupted = snapshot(model, optimizer)

    torch.manual_seed(1234)  # a restarted job starts from a different RNG state
    model2, optimizer2, scheduler2 = build(seed=7)
    start, _, _ = CheckpointManager(make_config(tmp_path), model2, optimizer2).load(
        scheduler=scheduler2
    )
    for _ in range(start + 1, 7):
        train_step(model2, optimizer2, scheduler2)

    assert start == 3
    assert_bit_equal(snapshot(model2, optimizer2), uninterrupted)


def test_save_writes_the_on_disk_contract(tmp_path: Path) -> None:
    window = DynamicCheckpointWindow(start=0, stop=8)
    manager = _run(tmp_path, [2, 3], dyn_ckpt_window=window, interval=5)

    meta = {s: json.loads((tmp_path / f"step_{s}" / "metadata.json").read_text()) for s in (2, 3)}
    assert set(meta[2]) == {
        "step",
        "tokens_seen",
        "dynamic_milestone",
        "checkpoint",
        "world_size",
        "format_version",
        "saved_at",
        "metrics",
        "run_id",  # lineage: the manager that wrote it, and where its run resumed from
        "resumed_from",
    }
    assert (meta[2]["step"], meta[2]["tokens_seen"], meta[2]["world_size"]) == (2, 8, 1)
    assert meta[2]["dynamic_milestone"] is True  # 0 + 2^1
    assert meta[3]["dynamic_milestone"] is False
    assert meta[2]["checkpoint"] == config_to_dict(manager.config)
    assert meta[2]["format_version"] == 1
    assert datetime.fromisoformat(meta[2]["saved_at"]).tzinfo is not None
    assert os.readlink(tmp_path / "latest") == "step_3"
    step_dir = tmp_path / "step_3"
    assert {p.name for p in step_dir.iterdir()} >= {DCP_METADATA, "train_state.pt"}
    keys = FileSystemReader(str(step_dir)).read_metadata().state_dict_metadata
    assert {k.split(".")[0] for k in keys} == {"model", "optimizer"}
    assert "model.head.weight" in keys
    assert "optimizer.state.head.weight.exp_avg" in keys


def test_exclude_keys_and_exclude_from_loading(tmp_path: Path) -> None:
    run = _run(tmp_path, [2])
    saved = snapshot(run.model, run.optimizer)
    model, optimizer, _ = build(1)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)

    manager.load(exclude_keys=["optimizer"])
    assert_bit_equal(snapshot(model)["model"], saved["model"])
    assert len(optimizer.state) == 0  # untouched: no moments were loaded or created

    model2, optimizer2, _ = build(1)
    initial = snapshot(model2)["model"]
    configured = make_config(tmp_path, exclude_from_loading=["model"])
    CheckpointManager(configured, model2, optimizer2).load()
    assert_bit_equal(snapshot(model2)["model"], initial)
    assert_bit_equal(snapshot(model2, optimizer2)["optimizer"], saved["optimizer"])

    model3, optimizer3, _ = build(1)
    CheckpointManager(configured, model3, optimizer3).load(exclude_keys=[])  # overrides config
    assert_bit_equal(snapshot(model3, optimizer3), saved)

    with pytest.raises(ConfigError, match=r"'weights'.*neither a part \(model, optimizer"):
        manager.load(exclude_keys=["weights"])


def test_resolution_order_explicit_then_load_path_then_latest(tmp_path: Path) -> None:
    _run(tmp_path, [1, 2, 3])
    step_1, step_2 = tmp_path / "step_1", tmp_path / "step_2"

    assert _fresh(tmp_path).peek_saved_step() == 3
    assert _fresh(tmp_path).load()[0] == 3
    assert _fresh(tmp_path, load_path=str(step_2)).load()[0] == 2
    assert _fresh(tmp_path, load_path=str(step_2)).load(path=step_1)[0] == 1
    assert _fresh(tmp_path).load(path=str(step_1)) == (1, 4, {"at": 1})
    assert _fresh(tmp_path).peek_saved_step(tmp_path) == 3  # a root: its newest complete


def test_missing_explicit_path_or_load_path_raises(tmp_path: Path) -> None:
    _run(tmp_path, [1])
    missing = tmp_path / "step_99"

    with pytest.raises(CheckpointNotFoundError, match=r"step_99.*load\(\)") as excinfo:
        _fresh(tmp_path).load(path=missing)
    assert isinstance(excinfo.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.load_path"):
        _fresh(tmp_path, load_path=str(missing)).load()
    with pytest.raises(FileNotFoundError):
        _fresh(tmp_path, load_path=str(missing)).peek_saved_step()


def test_explicit_incomplete_checkpoint_raises(tmp_path: Path) -> None:
    _run(tmp_path, [1, 2])
    (tmp_path / "step_2" / DCP_METADATA).unlink()

    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        _fresh(tmp_path).load(path=tmp_path / "step_2")


def test_no_checkpoint_at_all_starts_from_scratch(tmp_path: Path) -> None:
    manager = _fresh(tmp_path / "never-created")
    before = snapshot(manager.model)

    assert manager.load() == (0, 0, {})
    assert manager.peek_saved_step() is None
    assert_bit_equal(snapshot(manager.model), before)
    (tmp_path / "empty").mkdir()
    assert _fresh(tmp_path / "empty").load() == (0, 0, {})


def test_incomplete_latest_falls_back_to_newest_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _run(tmp_path, [1, 2, 3])
    (tmp_path / "step_3" / DCP_METADATA).unlink()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _fresh(tmp_path).load()[0] == 2
    assert "latest -> step_3 is incomplete" in caplog.text
    assert "falling back to step_2" in caplog.text

    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to("/etc")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _fresh(tmp_path).load()[0] == 2
    assert "latest -> /etc" in caplog.text
    assert "no usable 'latest'; resuming from step_2" in caplog.text


def test_dataloader_state_is_stashed_until_applied(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    loader = CountingLoader()
    loader.advance(17)
    CheckpointManager(make_config(tmp_path), model, optimizer).save(1, dataloader=loader)

    manager = _fresh(tmp_path)
    manager.load()
    later = CountingLoader()

    assert manager.apply_dataloader_state(later) is True
    assert later.position == 17
    assert manager.apply_dataloader_state(CountingLoader()) is False


def test_save_replaces_a_leftover_directory_of_the_same_step(tmp_path: Path) -> None:
    leftover = tmp_path / "step_2"
    leftover.mkdir(parents=True)
    (leftover / DCP_METADATA).write_bytes(b"stale marker of an older save")
    (leftover / "__7_0.distcp").write_bytes(b"stale shard")

    _run(tmp_path, [2])

    assert not (leftover / "__7_0.distcp").exists()
    assert _fresh(tmp_path).load()[0] == 2
    trash = tmp_path / ".kf-trash"  # the leftover went there; the save's retention emptied it
    assert not trash.exists() or list(trash.iterdir()) == []


def test_failed_save_raises_and_leaves_latest(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    manager.save(1)
    (tmp_path / "step_2").write_text("a file where the checkpoint should go")

    with pytest.raises(CheckpointSaveError, match="not a checkpoint directory"):
        manager.save(2)
    with pytest.raises(TypeError, match="weights_only"):
        manager.save(3, extra={"bad": object()})

    assert read_latest(tmp_path).step == 1
    assert not (tmp_path / "step_3" / DCP_METADATA).exists()


def test_frozen_parameter_mismatch_needs_ignore_freeze_mismatch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _run(tmp_path, [2])
    model, optimizer, _ = build(1)
    model.head.weight.requires_grad_(False)

    with pytest.raises(ConfigError, match=r"head\.weight.*ignore_freeze_mismatch=true"):
        CheckpointManager(make_config(tmp_path), model, optimizer).load()

    lenient = make_config(tmp_path, ignore_freeze_mismatch=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert CheckpointManager(lenient, model, optimizer).load()[0] == 2
    assert "frozen parameters differ" in caplog.text
    saved = FileSystemReader(str(tmp_path / "step_2")).read_metadata().state_dict_metadata
    assert "model.head.weight" in saved
