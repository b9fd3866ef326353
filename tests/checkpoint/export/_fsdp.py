"""A 2-rank FSDP2 checkpoint, written by real processes over gloo on CPU.

Each rank holds half of every parameter (``fully_shard``; uneven for odd sizes); ``dcp.save``
writes one shard file per rank. Rank 0 also saves the full tensors (gathered with
``DTensor.full_tensor``) as the reference an export must reproduce.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD_SIZE = 2
STEP = 3
TOKENS_SEEN = 4096


class FsdpNet(nn.Module):
    """Row counts 6 and 5: one evenly and one unevenly split across two ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 6), nn.Linear(6, 5)])
        self.register_buffer("steps", torch.tensor(11, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _worker(rank: int, store_path: str, root: str, reference: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from kempnerforge.checkpoint.store.files import write_json_atomic
    from kempnerforge.checkpoint.store.layout import step_dir_name
    from tests.checkpoint.export._ckpt import training_state

    store = dist.FileStore(store_path, WORLD_SIZE)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE)
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        torch.manual_seed(0)
        model = FsdpNet()
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        model(torch.randn(3, 8)).sum().backward()
        optimizer.step()
        state = training_state(model, optimizer)
        step_dir = Path(root) / step_dir_name(STEP)
        dcp.save(state, checkpoint_id=str(step_dir))
        full = {
            name: t.full_tensor() if isinstance(t, DTensor) else t
            for name, t in state["model"].items()
        }
        if rank == 0:
            torch.save(full, reference)
            write_json_atomic(
                step_dir / "metadata.json", {"step": STEP, "tokens_seen": TOKENS_SEEN}
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def write_fsdp_checkpoint(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Spawn the ranks; return the step dir and the full reference tensors."""
    root.mkdir(parents=True, exist_ok=True)
    reference = root.parent / "fsdp_reference.pt"
    fd, store_path = tempfile.mkstemp(prefix="kf-store-", dir=root.parent)
    os.close(fd)
    os.unlink(store_path)
    mp.spawn(_worker, args=(store_path, str(root), str(reference)), nprocs=WORLD_SIZE, join=True)
    return root / f"step_{STEP}", torch.load(reference, weights_only=True)
