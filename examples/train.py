"""Train a tiny transformer-style language model with checkpoints from CheckpointManager.

The loop shows the four calls a training script makes: ``load`` before the first step (step 0
when there is no checkpoint yet), ``config.should_save(step)`` after each step, ``save`` when it
says so, and ``wait`` before exiting so the last background save is finished and published.
Run it twice and the second run continues where the first one stopped.

Example:
    python examples/train.py --config examples/job.toml
    python examples/train.py --config examples/job.toml --kill-at 350   # crash on purpose
    python examples/train.py --config examples/job.toml                 # resumes, finishes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tomllib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.config import CheckpointConfig, load_config

VOCAB = 128
SEQ_LEN = 32
BATCH = 16

StepHook = Callable[[int, float], None]
"""Called as ``after_step(step, loss)`` at the end of every training step."""


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TinyLM(nn.Module):
    """A two-block decoder-only language model (~35k parameters)."""

    def __init__(self, dim: int = 32, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(SEQ_LEN, dim)
        self.layers = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class SyntheticTokens:
    """Endless batches of a noisy random successor rule; resumable through ``state_dict``.

    Each token is followed by its fixed successor ``successor[token]``, or, one time in four, by
    a random token: a pattern the model can learn, with noise it cannot. Batch ``i`` depends
    only on the seed and ``i``, so ``position`` is all it takes to resume the stream exactly.
    """

    def __init__(self, seed: int, position: int = 0) -> None:
        self.seed = seed
        self.position = position
        self.successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
        self.position += 1
        tokens = torch.randint(VOCAB, (BATCH, SEQ_LEN + 1), generator=g)
        noise = torch.rand(BATCH, SEQ_LEN, generator=g) < 0.25
        for t in range(SEQ_LEN):
            follow = self.successor[tokens[:, t]]
            tokens[:, t + 1] = torch.where(noise[:, t], tokens[:, t + 1], follow)
        return tokens

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data seed {state['seed']} in the checkpoint, {self.seed} configured")
        self.position = state["position"]


def build(seed: int, steps: int) -> tuple[TinyLM, torch.optim.Optimizer, Any, SyntheticTokens]:
    """Model, optimizer, scheduler and data, exactly as a fresh run creates them."""
    torch.manual_seed(seed)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return model, optimizer, scheduler, SyntheticTokens(seed)


def train(
    config: CheckpointConfig, *, steps: int, seed: int = 0, after_step: StepHook | None = None
) -> None:
    """Train to ``steps``, resuming from the newest checkpoint under ``config.dir`` if any."""
    model, optimizer, scheduler, data = build(seed, steps)
    manager = CheckpointManager(config, model, optimizer)
    # Restores model, optimizer, scheduler, data position and RNG; (0, 0, {}) on a fresh run.
    start, tokens_seen, _ = manager.load(scheduler=scheduler, dataloader=data)
    print(f"starting at step {start}" + (f" (resumed from {config.dir})" if start else ""))

    model.train()
    for step in range(start + 1, steps + 1):
        batch = next(data)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        tokens_seen += batch[:, :-1].numel()

        if config.should_save(step):
            # Async mode: returns once the state is copied; the write continues in the background.
            manager.save(step, tokens_seen=tokens_seen, scheduler=scheduler, dataloader=data)
        if step % 50 == 0 or step == steps:
            print(f"step {step:4d}  loss {loss.item():.4f}  tokens {tokens_seen}")
        if after_step is not None:
            after_step(step, loss.item())

    manager.wait()  # the last save is durable and `latest` points at it
    print(f"finished at step {steps}; latest checkpoint: {latest_name(config)}")


def demo_hooks(losses: Path | None, kill_at: int | None) -> StepHook:
    """What ``--losses`` and ``--kill-at`` do after each step (examples/demo.py uses both)."""

    def after_step(step: int, loss: float) -> None:
        if losses is not None:  # JSON keeps a float's repr, so the demo compares exact values
            with losses.open("a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss}) + "\n")
        if step == kill_at:  # die like a preempted job: no cleanup, a save maybe mid-write
            print(f"step {step:4d}  simulating a crash: SIGKILL", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return after_step


def latest_name(config: CheckpointConfig) -> str:
    link = Path(config.dir) / "latest"
    return os.readlink(link) if link.is_symlink() else "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="examples/job.toml", help="job TOML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a [checkpoint] key, e.g. --set checkpoint.dir=/tmp/run (repeatable)",
    )
    parser.add_argument("--steps", type=int, help="train up to this step (default: [train].steps)")
    parser.add_argument("--kill-at", type=int, help="SIGKILL this process after that step")
    parser.add_argument("--losses", type=Path, help="append each step's loss to this JSONL file")
    args = parser.parse_args(argv)

    with open(args.config, "rb") as fh:
        job = tomllib.load(fh).get("train", {})
    config = load_config(args.config, args.overrides)
    steps = args.steps if args.steps is not None else int(job.get("steps", 400))
    if steps <= 0:
        parser.error(f"--steps must be positive, got {steps}")
    # One process, no process group: DCP's notice that it assumes a single process is expected.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and runs are reproducible
    train(
        config,
        steps=steps,
        seed=int(job.get("seed", 0)),
        after_step=demo_hooks(args.losses, args.kill_at),
    )


if __name__ == "__main__":
    main()
