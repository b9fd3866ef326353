"""Two CPU ranks (gloo, FSDP2 ``fully_shard``): save, then load on 2 ranks and on 1 (resharding).

One spawn runs every multi-rank check, to keep the suite fast: a sync save and a 2-rank load, a
fine-tune that re-initialises the head (``exclude_from_loading`` by FQN prefix), an async save of DTensor state that training mutates during the flush, and a pipeline-parallel
layout (each rank its own stage, with its own process group). The parent then loads the FSDP2
checkpoint in a single process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.manager.train_state import RNG_EXTENSION_KEY, load_train_state
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import DCP_METADATA, check_complete
from tests.checkpoint._models import (
    DIM,
    TinyNet,
    assert_bit_equal,
    make_config,
    snapshot,
    train_step,
)

WORLD = 2


def _sharded(seed: int) -> tuple[TinyNet, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = TinyNet()
    mesh = init_device_mesh("cpu", (WORLD,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _check_sync_save_and_two_rank_load(rank: int, out: Path) -> None:
    root = out / "fsdp"
    model, optimizer = _sharded(seed=0)
    manager = CheckpointManager(make_config(root), model, optimizer)
    torch.manual_seed(100 + rank)  # each rank draws its own batches and dropout masks
    for _ in range(2):
        train_step(model, optimizer)
    manager.save(2, tokens_seen=64, extra={"world": WORLD})
    rng_at_save = torch.get_rng_state()
    expected = snapshot(model, optimizer)
    if rank == 0:
        torch.save(expected, out / "expected.pt")
    train_step(model, optimizer)  # the run goes on...
    continued = snapshot(model, optimizer)

    fresh, fresh_optimizer = _sharded(seed=1)
    step, tokens, extra = CheckpointManager(make_config(root), fresh, fresh_optimizer).load()

    assert (step, tokens, extra) == (2, 64, {"world": WORLD})
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected, f"rank {rank}")
    assert torch.equal(torch.get_rng_state(), rng_at_save), f"rank {rank}: RNG not its own"
    train_step(fresh, fresh_optimizer)  # ...and a resumed run continues identically
    assert_bit_equal(snapshot(fresh, fresh_optimizer), continued, f"rank {rank} continued")


def _check_fine_tune_with_a_reinitialised_head(rank: int, out: Path) -> None:
    """exclude_from_loading by FQN prefix on FSDP2 shards: the head keeps its fresh values."""
    saved: dict[str, Any] = torch.load(out / "expected.pt", weights_only=True)
    model, optimizer = _sharded(seed=11)
    before = snapshot(model, optimizer)
    config = make_config(out / "fsdp", exclude_from_loading=["head"])
    CheckpointManager(config, model, optimizer).load()
    after = snapshot(model, optimizer)
    for name, value in after["model"].items():
        expected = before["model"][name] if name.startswith("head") else saved["model"][name]
        assert_bit_equal(value, expected, f"rank {rank} {name}")
    for name, value in after["optimizer"]["state"].items():
        if name.startswith("head"):
            assert torch.count_nonzero(value["exp_avg"]) == 0, f"rank {rank}: head moments loaded"
        else:
            assert_bit_equal(value, saved["optimizer"]["state"][name], f"rank {rank} {name}")


def _check_async_save_of_dtensors(rank: int, out: Path) -> None:
    root = out / "fsdp_async"
    model, optimizer = _sharded(seed=2)
    manager = CheckpointManager(make_config(root, async_mode="async"), model, optimizer)
    torch.manual_seed(200 + rank)
    train_step(model, optimizer)
    manager.save(1)
    expected = snapshot(model, optimizer)
    train_step(model, optimizer)  # mutates parameters and moments while the flush runs
    # The flush may already be durable (then rank 0 has moved latest to it), never partial.
    assert read_latest(root).step in {None, 1}
    assert manager.flush_pending_save() == 1
    dist.barrier()
    assert read_latest(root).step == 1

    fresh, fresh_optimizer = _sharded(seed=3)
    CheckpointManager(make_config(root), fresh, fresh_optimizer).load()
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected, f"rank {rank} async")
    manager.close()


def _check_pipeline_stages(rank: int, out: Path) -> None:
    root = out / "pp"
    stage_groups = [dist.new_group([r]) for r in range(WORLD)]  # collective: every rank makes all
    torch.manual_seed(300 + rank)
    stage = torch.nn.Linear(DIM, DIM + rank)  # stages hold different layers
    optimizer = torch.optim.AdamW(stage.parameters())
    stage(torch.randn(2, DIM)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(
        make_config(root), stage, optimizer, process_group=stage_groups[rank], pp_rank=rank
    )
    manager.save(5)
    expected = snapshot(stage, optimizer)
    dist.barrier()
    step_dir = root / "step_5"
    assert {p.name for p in step_dir.iterdir()} >= {"pp0", "pp1", "train_state.pt"}
    assert (step_dir / f"pp{rank}" / DCP_METADATA).is_file()
    assert json.loads((step_dir / "metadata.json").read_text())["pp_stages"] == WORLD
    assert check_complete(step_dir, pp_stages=WORLD).complete

    fresh = torch.nn.Linear(DIM, DIM + rank)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    loader = CheckpointManager(
        make_config(root), fresh, fresh_optimizer, process_group=stage_groups[rank], pp_rank=rank
    )
    assert loader.load()[0] == 5
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected, f"stage {rank}")


def _worker(rank: int, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=WORLD
    )
    try:
        _check_sync_save_and_two_rank_load(rank, out)
        dist.barrier()  # rank 0 has written expected.pt
        _check_fine_tune_with_a_reinitialised_head(rank, out)
        _check_async_save_of_dtensors(rank, out)
        _check_pipeline_stages(rank, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(out,), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
def test_two_ranks_save_and_load_bit_exactly(two_rank_run: Path) -> None:
    # The checks ran inside the ranks (a failure there fails the spawn); what they left behind:
    root = two_rank_run / "fsdp"
    meta = json.loads((root / "step_2" / "metadata.json").read_text())
    assert meta["world_size"] == WORLD
    assert "pp_stages" not in meta
    rng = load_train_state(root / "step_2" / "train_state.pt")["rng"]
    assert len(rng[RNG_EXTENSION_KEY]["ranks"]) == WORLD
    assert sorted(p.name for p in (root / "step_2").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert read_latest(two_rank_run / "fsdp_async").step == 1


@pytest.mark.slow
def test_two_rank_checkpoint_loads_on_one_rank(
    two_rank_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected: dict[str, Any] = torch.load(two_rank_run / "expected.pt", weights_only=True)
    torch.manual_seed(5)
    model = TinyNet()  # plain, unsharded
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    manager = CheckpointManager(make_config(two_rank_run / "fsdp"), model, optimizer)

    with caplog.at_level(logging.WARNING, logger="kempnerforge.checkpoint"):
        step, tokens, _ = manager.load()

    assert (step, tokens) == (2, 64)
    assert_bit_equal(snapshot(model, optimizer), expected, "resharded 2 -> 1")
    assert "saved by 2 ranks, loaded by 1" in caplog.text
