"""Two gloo ranks: a rank that fails to stage an async save, and a rank that dies (case 5).

Before: rank 0 had already started its flush when rank 1 failed to stage; the next ``save()``
deadlocked (rank 0 waiting for the orphaned flush, rank 1 in the manager's gather) until gloo's
30-minute default timeout. Now the ranks agree that staging succeeded everywhere before any flush
starts, and every collective of the manager is bounded by ``collective_timeout_s``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.checkpoint.manager._groups import LostPeerError
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.errors import CheckpointSaveError
from tests.checkpoint._models import build, make_config, train_step

WORLD = 2
TIMEOUT_S = 15.0


def _worker(rank: int, out: Path) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'rendezvous'}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    root = out / "ckpt"
    model, optimizer, _ = build(0)
    config = make_config(root, async_mode="async")
    manager = CheckpointManager(config, model, optimizer, collective_timeout_s=TIMEOUT_S)
    assert manager._async is not None
    train_step(model, optimizer)
    manager.save(10)
    manager.wait()

    staging = manager._async.stage
    if rank == 1:  # this host cannot allocate the staging copy of step 20

        def fail(state: dict) -> dict:
            raise MemoryError("cannot allocate the host copy")

        manager._async.stage = fail  # type: ignore[method-assign]
    with pytest.raises(CheckpointSaveError, match="staging step 20"):
        manager.save(20)
    manager._async.stage = staging  # type: ignore[method-assign]
    assert manager._async.pending is None  # no rank started a flush

    started = time.monotonic()
    train_step(model, optimizer)
    manager.save(30)  # no deadlock: the next save goes through on both ranks
    manager.wait()
    dist.barrier()
    report = {"save_30_s": time.monotonic() - started, "latest": read_latest(root).step}
    report["inflight"] = sorted(p.name for p in root.glob(".kf-inflight.*"))
    report["steps"] = sorted(p.name for p in root.glob("step_*"))
    if rank == 1:
        os._exit(0)  # this rank dies without a word (a crashed node)

    started = time.monotonic()
    try:
        manager.save(40)
    except LostPeerError as exc:
        report["lost_peer"] = str(exc)
    report["lost_peer_s"] = time.monotonic() - started
    (out / "rank0.json").write_text(json.dumps(report))
    os._exit(0)  # the group is broken: skip its teardown


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_failing_to_stage_or_dying_never_hangs_the_job(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(tmp_path,), nprocs=WORLD, join=True)
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["latest"] == 30
    assert report["steps"] == ["step_10", "step_30"] and report["inflight"] == []
    assert "another rank did not answer" in report["lost_peer"]
    assert report["lost_peer_s"] < TIMEOUT_S + 30  # bounded, not gloo's half hour
