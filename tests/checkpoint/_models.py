"""A tiny model, AdamW and train-step helpers for checkpoint tests (reusable by other suites).

Everything is deterministic given the global RNG: ``train_step`` draws its batch and dropout masks
from torch's global generator, so a resume is bit-identical only if the RNG is restored too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from kempnerforge.config.checkpoint import CheckpointConfig

DIM = 8
HIDDEN = 16


class Block(nn.Module):
    """Linear + LayerNorm + dropout, with a buffer that changes as it trains."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.down = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("running_mean", torch.zeros(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.up(x)))
        if self.training:
            # An EMA of a weight, not of the data: replicated buffers must agree across ranks.
            with torch.no_grad():
                self.running_mean.mul_(0.9).add_(self.norm.weight, alpha=0.1)
        return x + self.down(self.drop(h))


class TinyNet(nn.Module):
    """Two blocks and a head: small enough for a test, deep enough for FSDP2 per-block sharding."""

    def __init__(self, dim: int = DIM, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, hidden) for _ in range(2)])
        self.head = nn.Linear(dim, dim, bias=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.training:
            self.steps += 1
        return self.head(x)


def build(
    seed: int = 0, dim: int = DIM, hidden: int = HIDDEN
) -> tuple[TinyNet, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """A freshly initialised model, its AdamW and a warm-up scheduler."""
    torch.manual_seed(seed)
    model = TinyNet(dim, hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    return model, optimizer, scheduler


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    batch: int = 4,
) -> float:
    """One step on a random batch drawn from the global RNG; returns the loss."""
    model.train()
    head = getattr(model, "head", None)
    x = torch.randn(batch, head.in_features if isinstance(head, nn.Linear) else DIM)
    loss = ((model(x) - x.flip(-1)) ** 2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Full (unsharded) copies of weights, buffers and optimizer state, keyed by name.

    Collective under FSDP2: call it on every rank.
    """
    options = StateDictOptions(full_state_dict=True)
    state: dict[str, Any] = {"model": get_model_state_dict(model, options=options)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
    return _clone(state)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def assert_bit_equal(actual: Any, expected: Any, where: str = "state") -> None:
    """Same structure, same dtypes, same bits (``torch.equal``), reporting the first difference."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: not a tensor"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert torch.equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: not a dict"
        assert set(actual) == set(expected), f"{where}: keys {set(actual) ^ set(expected)} differ"
        for key in expected:
            assert_bit_equal(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, np.ndarray):  # the numpy RNG state
        assert isinstance(actual, np.ndarray), f"{where}: not an ndarray"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert np.array_equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_bit_equal(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


class CountingLoader:
    """A stand-in for a stateful dataloader: it only remembers how far it got."""

    def __init__(self) -> None:
        self.position = 0

    def advance(self, n: int = 1) -> None:
        self.position += n

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def make_config(root: Path, **overrides: Any) -> CheckpointConfig:
    """A CheckpointConfig writing under ``root`` (keep everything by default)."""
    overrides.setdefault("keep_last_n", 0)
    return CheckpointConfig(dir=str(root), **overrides)
