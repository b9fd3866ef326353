"""export / show / ls on DCP checkpoints not written by our manager, and the selection rule.

The foreign checkpoints are written here by code that follows each tool's layout, never by our
writer: torchtitan (``step-N`` directories, model tensors at the top level of the state dict
beside ``optimizer``, ``lr_scheduler``, ``dataloader`` and ``train_state``), a plain
``dcp.save(model.state_dict())``, and a renamed copy of one of ours.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
)

from kempnerforge.checkpoint.export import export_safetensors, inspect_checkpoint
from kempnerforge.checkpoint.export._model_part import plan_model_part
from kempnerforge.checkpoint.export._model_records import SelectionRule
from kempnerforge.checkpoint.store.resolve import resolve_checkpoint
from kempnerforge.cli.main import cli
from kempnerforge.errors import CheckpointNotFoundError, ExportError
from tests.checkpoint.export._ckpt import dcp_save, trained_model, training_state
from tests.checkpoint.export.conftest import STEP

KF_CKPT = Path(sys.executable).with_name("kf-ckpt")


def torchtitan_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> Any:
    """The dict torchtitan's checkpointer hands to ``dcp.save``.

    Its ModelWrapper's entries are merged into the top level; the optimizer container saves
    the flattened optimizer state dict; the train state saves its counters as tensors; the
    dataloader its per-rank state as bytes.
    """
    state: dict[str, Any] = dict(model.state_dict())
    state["optimizer"] = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True)
    )
    state["lr_scheduler"] = {"last_epoch": step, "_step_count": step + 1}
    state["dataloader"] = {"dp_rank_0": b"\x80\x04loader-state"}
    state["train_state"] = {
        "step": torch.tensor(step, dtype=torch.int32),
        "ntokens_seen": torch.tensor(step * 4096, dtype=torch.int64),
    }
    return state


@pytest.fixture
def torchtitan_root(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    model, optimizer = trained_model(seed=3)
    root = tmp_path / "outputs" / "checkpoint"
    for step in (1000, 2000):
        dcp_save(torchtitan_state(model, optimizer, step), root / f"step-{step}")
    return root, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_torchtitan_model_part_is_everything_outside_the_non_model_groups(torchtitan_root):
    root, weights = torchtitan_root
    contents = inspect_checkpoint(root / "step-2000")
    assert contents.rule is SelectionRule.outside_non_model_groups
    assert {t.name for t in contents.tensors} == set(weights)
    assert contents.step == 2000 and contents.tokens_seen is None
    groups = {g.name for g in contents.groups}
    assert {"optimizer", "lr_scheduler", "train_state", "layers", "embed"} <= groups
    assert contents.optimizer_tensors > 0 and contents.other_size_bytes > 0  # train_state


def test_torchtitan_export_by_directory_and_by_root_step(torchtitan_root, tmp_path):
    root, weights = torchtitan_root
    result = export_safetensors(root / "step-1000", tmp_path / "a.safetensors", dtype="float32")
    assert result.rule is SelectionRule.outside_non_model_groups and result.step == 1000
    exported = load_file(tmp_path / "a.safetensors")
    assert set(exported) == set(weights)
    assert all(torch.equal(exported[n], weights[n].float()) for n in weights if n != "steps")
    assert torch.equal(exported["steps"], weights["steps"])  # int64 keeps its dtype
    assert resolve_checkpoint(root, 2000) == root / "step-2000"


def test_torchtitan_root_without_step_names_its_checkpoints(torchtitan_root):
    root, _ = torchtitan_root
    with pytest.raises(CheckpointNotFoundError) as excinfo:
        resolve_checkpoint(root)
    message = str(excinfo.value)
    assert "holds 2 DCP checkpoints written under other names (step-1000, step-2000)" in message
    assert str(root / "step-2000") in message


def test_ls_says_foreign_checkpoints_are_not_managed_but_readable(torchtitan_root):
    root, _ = torchtitan_root
    result = CliRunner().invoke(cli, ["ls", str(root)], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"no checkpoints under {root}")
    assert "2 DCP checkpoints not named step_<N> (step-1000, step-2000)" in result.stderr
    assert "not managed here (gc never touches them)" in result.stderr
    assert "'kf-ckpt export' and 'kf-ckpt show' work on each" in result.stderr
    gc = CliRunner().invoke(cli, ["gc", str(root), "--keep-last-n", "1"], catch_exceptions=False)
    assert gc.exit_code == 0
    assert (root / "step-1000" / ".metadata").is_file()
    assert (root / "step-2000" / ".metadata").is_file()


def test_plain_dcp_save_of_a_state_dict(tmp_path):
    model, _ = trained_model(seed=5)
    target = tmp_path / "weights"  # no step in the name, no metadata.json, no train_state.pt
    dcp_save(model.state_dict(), target)
    part = plan_model_part(target)
    assert part.rule is SelectionRule.outside_non_model_groups and part.step is None
    result = export_safetensors(target, tmp_path / "out", dtype="float32")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert result.step is None and set(exported) == set(model.state_dict())
    code = CliRunner().invoke(cli, ["show", str(target)], catch_exceptions=False)
    assert code.exit_code == 0 and code.stdout.startswith(f"{target} (step unknown)")


def test_renamed_copy_of_our_checkpoint(weights_and_root, tmp_path):
    weights, root = weights_and_root
    copy = tmp_path / "scratch" / "run7-final"
    shutil.copytree(root / f"step_{STEP}", copy)
    result = export_safetensors(copy, tmp_path / "out.safetensors", dtype="float32")
    assert result.step == STEP and result.rule is SelectionRule.model_group  # from metadata.json
    exported = load_file(tmp_path / "out.safetensors")
    assert set(exported) == set(weights)


def test_include_exclude_patterns(tmp_path):
    model, optimizer = trained_model()
    state = training_state(model, optimizer)
    state["ema"] = {name: t * 0.5 for name, t in state["model"].items() if t.is_floating_point()}
    dcp_save(state, tmp_path / "ckpt")
    default = plan_model_part(tmp_path / "ckpt")
    assert default.rule is SelectionRule.model_group and len(default.tensors) == 11
    ema = plan_model_part(tmp_path / "ckpt", include=["ema.*"], exclude=["*.bias"])
    assert ema.rule is SelectionRule.include_patterns
    assert {e.name for e in ema.tensors} == {
        f"ema.{n}" for n in state["ema"] if not n.endswith(".bias")
    }
    assert ema.excluded_by_pattern == 3
    # A pattern may name the exported name or the full dotted name.
    short = plan_model_part(tmp_path / "ckpt", exclude=["layers.1.*"])
    full = plan_model_part(tmp_path / "ckpt", exclude=["model.layers.1.*"])
    assert [e.name for e in short.tensors] == [e.name for e in full.tensors]
    assert len(short.tensors) == 9 and short.excluded_by_pattern == 2
    assert "layers.0.weight" in {e.name for e in short.tensors}


def test_a_selection_that_leaves_nothing_lists_the_groups(weights_and_root):
    _, root = weights_and_root
    with pytest.raises(ExportError) as excinfo:
        plan_model_part(root / f"step_{STEP}", include=["nothing.*"])
    message = str(excinfo.value)
    assert "no model tensors selected" in message and "(nothing.*)" in message
    assert "top-level groups found: model (11 tensors), optimizer (21 tensors)" in message
    result = CliRunner().invoke(
        cli, ["export", str(root), "-o", str(root.parent / "o"), "--exclude", "*"]
    )
    assert result.exit_code == 1 and "top-level groups found: model" in result.stderr
    assert not (root.parent / "o").exists()


def test_installed_script_exports_a_torchtitan_checkpoint_with_exclude(torchtitan_root, tmp_path):
    root, weights = torchtitan_root
    out = tmp_path / "tt.safetensors"
    args = ["export", str(root), "--step", "1000", "-o", str(out), "--exclude", "lm_head.*"]
    proc = subprocess.run(
        [str(KF_CKPT), *args, "--dtype", "float32"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(load_file(out)) == set(weights) - {"lm_head.weight"}
    shown = subprocess.run(
        [str(KF_CKPT), "show", str(root / "step-1000"), "--include", "layers.*"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "model: 4 tensors" in shown.stdout and "chosen by --include" in shown.stdout
