"""Fixtures for the export tests: real DCP checkpoints written under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.checkpoint.export._ckpt import (
    model_weights,
    trained_model,
    training_state,
    write_checkpoint,
)
from tests.checkpoint.export._fsdp import write_fsdp_checkpoint

STEP = 10
TOKENS_SEEN = 123_456


@pytest.fixture
def weights_and_root(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """A checkpoint root with ``step_10`` (model + AdamW state) and the model's own tensors."""
    model, optimizer = trained_model()
    root = tmp_path / "ckpt"
    write_checkpoint(root, STEP, training_state(model, optimizer), tokens_seen=TOKENS_SEEN)
    return model_weights(model), root


@pytest.fixture(scope="session")
def fsdp_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint written by 2 FSDP2 ranks (spawned once per session) and its full tensors."""
    return write_fsdp_checkpoint(tmp_path_factory.mktemp("fsdp") / "ckpt")
