"""Moving between upstream KempnerForge and us while a run is in progress, both ways.

Upstream-format files are written here the way upstream's manager writes them (its
``build_train_state`` layout, ``torch.save``d, next to ``dcp.save({"model", "optimizer"})``), and
our files are restored the way upstream's ``restore_train_state`` restores them (every
non-standard key is an extra; RNG restored with the stdlib/numpy/torch setters directly).
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from kempnerforge.checkpoint import state as compat
from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.manager.train_state import load_train_state
from kempnerforge.errors import ConfigError, CorruptCheckpointError
from tests.checkpoint._models import (
    CountingLoader,
    assert_bit_equal,
    build,
    make_config,
    snapshot,
    train_step,
)

UPSTREAM_STANDARD = {"step", "tokens_seen", "rng", "scheduler", "dataloader"}


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def _upstream_restore(state: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """What upstream's resume does with a loaded train_state, written out with its setters."""
    rng = state["rng"]
    random.setstate(rng["python"])  # raises "state vector must be a tuple" for a list
    np.random.set_state(rng["numpy"])
    torch.random.set_rng_state(rng["torch_cpu"])
    extra = {k: v for k, v in state.items() if k not in UPSTREAM_STANDARD}
    return state["step"], state["tokens_seen"], extra


def test_our_file_restores_under_upstream_semantics(tmp_path: Path) -> None:
    model, optimizer, scheduler = build(0)
    train_step(model, optimizer, scheduler)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    extra = {"curriculum_phase": 2, "tracker_run_id": "abc123", "lengths": [1, 2]}
    step_dir = manager.save(7, tokens_seen=700, scheduler=scheduler, extra=extra)
    expected = _draws()

    # Upstream loads with weights_only=False; ours must load with weights_only=True too.
    state = torch.load(step_dir / "train_state.pt", weights_only=False)
    assert set(state) == {"step", "tokens_seen", "rng", "scheduler", *extra}  # no other key
    assert load_train_state(step_dir / "train_state.pt").keys() == state.keys()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert _upstream_restore(state) == (7, 700, extra)
    actual = _draws()
    assert actual[:2] == expected[:2] and torch.equal(actual[2], expected[2])
    # Upstream's own restore helper (same names here) agrees.
    assert compat.restore_train_state(state, scheduler=scheduler) == (7, 700, extra)


def _write_upstream_checkpoint(root: Path, step: int, extra: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint laid out as upstream KempnerForge's manager writes one."""
    model, optimizer, scheduler = build(3)
    for _ in range(2):
        train_step(model, optimizer, scheduler)
    step_dir = root / f"step_{step}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            checkpoint_id=str(step_dir),
        )
    np.random.seed(11)
    random.seed(12)
    train_state: dict[str, Any] = {
        "step": step,
        "tokens_seen": step * 100,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch_cpu": torch.random.get_rng_state(),
        },
        "scheduler": scheduler.state_dict(),
        **extra,
    }
    torch.save(train_state, step_dir / "train_state.pt")
    (step_dir / "metadata.json").write_text(json.dumps({"step": step, "tokens_seen": step * 100}))
    (root / "latest").symlink_to(step_dir.name)
    return {"draws": _draws(), "scheduler": scheduler.state_dict(), "model": snapshot(model)}


def test_upstream_checkpoint_resumes_with_its_extras(tmp_path: Path) -> None:
    extra = {"curriculum_phase": 3, "wandb_run_id": "r-9"}
    written = _write_upstream_checkpoint(tmp_path, 20, extra)
    model, optimizer, scheduler = build(5)
    random.seed(0)
    np.random.seed(0)

    result = CheckpointManager(make_config(tmp_path), model, optimizer).load(scheduler=scheduler)

    assert result == (20, 2000, extra)
    assert scheduler.state_dict() == written["scheduler"]
    assert_bit_equal(snapshot(model)["model"], written["model"]["model"])
    actual = _draws()
    assert actual[:2] == written["draws"][:2] and torch.equal(actual[2], written["draws"][2])


def test_reserved_extra_key_is_refused_at_save_time(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path), model, optimizer)
    with pytest.raises(ValueError, match=r"extra key 'step' is reserved in train_state\.pt"):
        manager.save(1, extra={"step": 5})
    assert not (tmp_path / "step_1").exists()
    with pytest.raises(ValueError, match="extra key 'rng' is reserved"):
        compat.build_train_state(1, 0, extra={"rng": 1})


def test_upstream_helpers_have_upstream_names_and_meaning() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = compat.get_rng_state()
    assert {"python", "numpy", "torch_cpu"} <= set(rng)
    assert isinstance(rng["python"], tuple) and rng["numpy"][0] == "MT19937"
    expected = _draws()
    compat.set_rng_state(rng)
    actual = _draws()
    assert actual[:2] == expected[:2] and torch.equal(actual[2], expected[2])

    loader, scheduler_state = CountingLoader(), {"last_epoch": 4}
    loader.advance(9)
    state = compat.build_train_state(5, 50, dataloader=loader, extra={"phase": 1})
    assert set(state) == {"step", "tokens_seen", "rng", "dataloader", "phase"}
    fresh = CountingLoader()
    assert compat.restore_train_state(state, dataloader=fresh) == (5, 50, {"phase": 1})
    assert fresh.position == 9
    # No load_state_dict: upstream skips it, so do we.
    assert compat.restore_train_state(state, dataloader=object()) == (5, 50, {"phase": 1})
    assert compat.restore_train_state({"step": 1, "scheduler": scheduler_state})[0] == 1


def test_apply_dataloader_state_accepts_none_and_stateless_loaders(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    loader = CountingLoader()
    loader.advance(6)
    CheckpointManager(make_config(tmp_path), model, optimizer).save(2, dataloader=loader)
    resumed = CheckpointManager(make_config(tmp_path), *build(1)[:2])
    resumed.load()
    assert resumed.apply_dataloader_state(None) is False
    assert resumed.apply_dataloader_state(object()) is False  # type: ignore[arg-type]
    fresh = CountingLoader()
    assert resumed.apply_dataloader_state(fresh) is True and fresh.position == 6


def _pretrained(root: Path) -> tuple[dict[str, Any], CheckpointManager]:
    model, optimizer, scheduler = build(0)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    manager = CheckpointManager(make_config(root), model, optimizer)
    manager.save(3, scheduler=scheduler)
    return snapshot(model, optimizer), manager


def test_fine_tune_with_a_reinitialised_head(tmp_path: Path) -> None:
    saved, _ = _pretrained(tmp_path)
    model, optimizer, _ = build(9)
    head_before = model.head.weight.detach().clone()
    config = make_config(tmp_path, exclude_from_loading=["head"])

    CheckpointManager(config, model, optimizer).load()

    after = snapshot(model, optimizer)
    assert torch.equal(model.head.weight, head_before)  # kept its fresh values
    for name, value in saved["model"].items():
        if not name.startswith("head"):
            assert_bit_equal(after["model"][name], value, name)
    for name, value in saved["optimizer"]["state"].items():
        if name.startswith("head"):  # not loaded: the fresh optimizer's zero moments
            assert not torch.equal(after["optimizer"]["state"][name]["exp_avg"], value["exp_avg"])
            assert torch.count_nonzero(after["optimizer"]["state"][name]["exp_avg"]) == 0
        else:
            assert_bit_equal(after["optimizer"]["state"][name], value, name)


def test_fqn_prefixes_match_whole_dotted_names(tmp_path: Path) -> None:
    saved, _ = _pretrained(tmp_path)
    model, optimizer, _ = build(9)
    fresh_up = model.blocks[1].up.weight.detach().clone()
    config = make_config(tmp_path, exclude_from_loading=["blocks.1.up", "optimizer"])
    CheckpointManager(config, model, optimizer).load()
    assert torch.equal(model.blocks[1].up.weight, fresh_up)
    assert not torch.equal(model.blocks[1].up.bias, saved["model"]["blocks.1.up.bias"])
    assert torch.equal(model.blocks[1].norm.weight, saved["model"]["blocks.1.norm.weight"])
    assert optimizer.state == {}  # the whole optimizer part was skipped

    with pytest.raises(ConfigError, match=r"cannot exclude 'blocks\.1\.u'.*blocks, head, steps"):
        CheckpointManager(
            make_config(tmp_path, exclude_from_loading=["blocks.1.u"]), *build(9)[:2]
        ).load()


def test_resume_never_restarts_silently(tmp_path: Path) -> None:
    _pretrained(tmp_path)
    (tmp_path / "step_3" / ".metadata").unlink()  # latest now names a damaged checkpoint
    model, optimizer, _ = build(1)
    with pytest.raises(CorruptCheckpointError) as excinfo:
        CheckpointManager(make_config(tmp_path), model, optimizer).load()
    message = str(excinfo.value)
    assert f"no complete checkpoint to resume from under {tmp_path}" in message
    assert "step_3 (incomplete" in message and "latest -> step_3" in message
    assert "to start from step 0 on purpose" in message
    empty = tmp_path / "fresh"
    assert CheckpointManager(make_config(empty), *build(1)[:2]).load() == (0, 0, {})


def test_load_path_accepts_a_plain_dcp_checkpoint(tmp_path: Path) -> None:
    source, _, _ = build(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(source.state_dict(), checkpoint_id=str(tmp_path / "pretrained"))
    model, optimizer, _ = build(8)
    manager = CheckpointManager(make_config(tmp_path / "run"), model, optimizer)
    assert manager.load(path=tmp_path / "pretrained") == (0, 0, {})
    assert_bit_equal(snapshot(model)["model"], snapshot(source)["model"])
