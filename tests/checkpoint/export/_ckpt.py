"""Checkpoints for export tests: a small model with every kind of entry, saved with real DCP.

The state dict is what the CheckpointManager saves -- ``{"model": get_model_state_dict(m),
"optimizer": get_optimizer_state_dict(m, opt)}`` -- and helpers add what a test needs next to it
(a top-level key that only *looks* like the model, pipeline stages, metadata.json).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from kempnerforge.checkpoint.export import exporter
from kempnerforge.checkpoint.store.files import write_json_atomic
from kempnerforge.checkpoint.store.layout import step_dir_name

VOCAB = 16
DIM = 8


class ExportNet(nn.Module):
    """Embedding tied to the head, two linears, a norm, and int64 / bool / float16 buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([nn.Linear(DIM, DIM) for _ in range(2)])
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one parameter, two state-dict keys
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False] * (DIM // 2)))
        self.register_buffer("scale", torch.linspace(-2, 2, DIM).to(torch.float16))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = torch.relu(layer(x)) * self.scale.float()
        return self.lm_head(self.norm(x))


def trained_model(seed: int = 0) -> tuple[ExportNet, torch.optim.Optimizer]:
    """The model after one AdamW step, so that the optimizer has state (about 2x the model)."""
    torch.manual_seed(seed)
    model = ExportNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    tokens = torch.randint(0, VOCAB, (4, 5))
    model(tokens).sum().backward()
    optimizer.step()
    return model, optimizer


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The state dict the CheckpointManager hands to ``dcp.save``."""
    return {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }


def dcp_save(state: dict[str, Any], path: Path) -> None:
    """``dcp.save`` in this process (no process group)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(path))


def write_checkpoint(
    root: Path,
    step: int,
    state: dict[str, Any],
    *,
    tokens_seen: int = 1000,
    config: dict[str, Any] | None = None,
) -> Path:
    """``<root>/step_<step>/`` with the DCP files and a metadata.json, like a real save."""
    step_dir = root / step_dir_name(step)
    dcp_save(state, step_dir)
    document: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen}
    if config is not None:
        document["checkpoint"] = config
    write_json_atomic(step_dir / "metadata.json", document)
    return step_dir


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors by state-dict name (tied weights under both names)."""
    return {name: t.detach().clone() for name, t in get_model_state_dict(model).items()}


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What export does to one tensor: floating tensors to ``dtype``, others unchanged."""
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so NaN payloads and signed zeros count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def byte_ranges(dcp_dir: Path, top_key: str) -> list[tuple[Path, int, int]]:
    """``(file, offset, length)`` of every stored item under ``top_key`` of the saved state dict."""
    with open(dcp_dir / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)  # our own test checkpoint: trusted
    ranges = []
    for index, info in metadata.storage_data.items():
        if metadata.planner_data[index.fqn][0] == top_key:
            ranges.append((dcp_dir / info.relative_path, info.offset, info.length))
    return ranges


def scribble(ranges: list[tuple[Path, int, int]]) -> None:
    """Overwrite each byte range with garbage (the file keeps its size)."""
    for path, offset, length in ranges:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(b"\xa5" * length)


def flip_byte(path: Path, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` (a bad disk, as far as a reader can tell)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


def corrupt_after_write(monkeypatch: pytest.MonkeyPatch, corrupt: Callable[[Path], None]) -> None:
    """Make export damage each file it writes, after writing and before verifying it."""
    real_write = exporter._write_file

    def write_then_corrupt(*args: Any, **kwargs: Any) -> Path:
        tmp = real_write(*args, **kwargs)
        corrupt(tmp)
        return tmp

    monkeypatch.setattr(exporter, "_write_file", write_then_corrupt)
