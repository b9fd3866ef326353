"""inspect_checkpoint: the model's tensors and the optimizer's size, from DCP metadata alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.export.contents import inspect_checkpoint
from kempnerforge.errors import CheckpointNotFoundError, CorruptCheckpointError
from tests.checkpoint.export._ckpt import byte_ranges, scribble, trained_model, training_state
from tests.checkpoint.export.conftest import STEP, TOKENS_SEEN

Weights = dict[str, torch.Tensor]


def test_lists_model_tensors_and_sizes_the_optimizer(
    weights_and_root: tuple[Weights, Path],
) -> None:
    weights, root = weights_and_root
    model, optimizer = trained_model()
    optimizer_state = training_state(model, optimizer)["optimizer"]["state"]

    contents = inspect_checkpoint(root)

    assert (contents.step, contents.tokens_seen, contents.pp_stages) == (STEP, TOKENS_SEEN, None)
    assert contents.step_dir == root / f"step_{STEP}"
    by_name = {t.name: t for t in contents.tensors}
    assert set(by_name) == set(weights)
    for name, tensor in weights.items():
        info = by_name[name]
        assert info.shape == tuple(tensor.shape)
        assert info.dtype == str(tensor.dtype).removeprefix("torch.")
        assert info.size_bytes == tensor.numel() * tensor.element_size()
    assert contents.model_size_bytes == sum(t.numel() * t.element_size() for t in weights.values())
    moments = [t for state in optimizer_state.values() for t in state.values()]
    assert contents.optimizer_tensors == len(moments)
    assert contents.optimizer_size_bytes == sum(t.numel() * t.element_size() for t in moments)


def test_reads_no_tensor_data(weights_and_root: tuple[Weights, Path]) -> None:
    weights, root = weights_and_root
    step_dir = root / f"step_{STEP}"
    scribble(byte_ranges(step_dir, "model") + byte_ranges(step_dir, "optimizer"))
    assert len(inspect_checkpoint(step_dir).tensors) == len(weights)


def test_json_form_is_plain_data(weights_and_root: tuple[Weights, Path]) -> None:
    _, root = weights_and_root
    data = json.loads(json.dumps(inspect_checkpoint(root, step=STEP).to_json()))
    assert data["step"] == STEP and data["step_dir"] == str(root / f"step_{STEP}")
    steps = next(t for t in data["tensors"] if t["name"] == "steps")
    assert steps == {"name": "steps", "shape": [], "dtype": "int64", "size_bytes": 8, "stage": None}


def test_errors_name_the_problem(weights_and_root: tuple[Weights, Path]) -> None:
    _, root = weights_and_root
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 3"):
        inspect_checkpoint(root, step=3)
    (root / f"step_{STEP}" / ".metadata").write_bytes(b"\x80\x04truncated")
    with pytest.raises(CorruptCheckpointError, match=r"is corrupt \(DCP \.metadata is unusable"):
        inspect_checkpoint(root, step=STEP)
    with pytest.raises(CheckpointNotFoundError, match=f"step_{STEP} is corrupt"):
        inspect_checkpoint(root)
