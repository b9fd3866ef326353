"""Benchmark ``CheckpointManager.save`` against a bare ``dcp.save``, and async against sync.

The state is a model of 84 M fp32 parameters plus its AdamW moments: about 1 GiB in all. Two
figures, measured in one run, alternating so that both sides see the same disk and page cache:

* ``save_sync``: ``manager.save(step)`` in sync mode (train_state.pt, metadata.json, fence, DCP,
  fsyncs, ``latest``, a retention round) over a bare ``dcp.save`` of the same state dict.
  Target: at most 1.15x. Retention runs with ``keep_last_n=0`` and the previous checkpoint of
  each side is deleted untimed: deleting 1 GiB is the same ``rm`` for both, not save overhead.
* ``save_async_block``: how long ``manager.save(step)`` blocks the caller in async mode (staging
  to host memory, then returning while the flush runs), over the sync ``save()``. The flush is
  awaited untimed before the next save; the first async save, which also allocates the
  staging buffers, is printed apart and not counted. Target: at most 0.35x.

The disk is the bottleneck and is shared, so one save varies by tens of percent from run to
run: each figure compares the fastest of several repetitions (the cost without interference),
with bare and managed saves taking turns going first; the medians are printed as well. Run
with ``python -m bench manager``.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPEATS = 5
LAYERS = 5
WIDTH = 4096
TARGET_SYNC = 1.15
TARGET_ASYNC = 0.35


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _line(name: str, ours: float, base: float, labels: tuple[str, str], target: float) -> None:
    ratio = ours / base
    verdict = "OK" if ratio <= target else "MISS"
    print(
        f"manager.{name}: {labels[0]} {ours:.2f} s, {labels[1]} {base:.2f} s, "
        f"ratio {ratio:.2f}x (target <= {target:.2f}x) {verdict}",
        flush=True,
    )


def main() -> None:
    """Build the state, time both comparisons, print one line per figure."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from kempnerforge.checkpoint.manager import CheckpointManager
    from kempnerforge.config.checkpoint import CheckpointConfig

    logging.getLogger("kempnerforge").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="torch.distributed is .*uninitialized")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # materialise exp_avg / exp_avg_sq
    optimizer.zero_grad(set_to_none=True)
    total_bytes = sum(p.numel() * p.element_size() * 3 for p in model.parameters())
    print(f"   state: {total_bytes / 2**30:.2f} GiB (model + AdamW moments)", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_manager_"))
    try:
        sync = CheckpointManager(
            CheckpointConfig(dir=str(tmp / "sync"), keep_last_n=0), model, optimizer
        )
        lazy = CheckpointManager(
            CheckpointConfig(dir=str(tmp / "async"), keep_last_n=0, async_mode="async"),
            model,
            optimizer,
        )
        bare_times: list[float] = []
        sync_times: list[float] = []
        async_times: list[float] = []
        for step in range(1, REPEATS + 1):
            bare_dir = tmp / "bare" / f"step_{step}"

            def bare(bare_dir: Path = bare_dir) -> None:
                state = {
                    "model": get_model_state_dict(model),
                    "optimizer": get_optimizer_state_dict(model, optimizer),
                }
                dcp.save(state, checkpoint_id=str(bare_dir))

            def managed(step: int = step) -> None:
                sync.save(step)

            # Take turns going first, so neither side always pays for the other's writeback.
            pair = [(bare, bare_times), (managed, sync_times)]
            for action, times in pair if step % 2 else reversed(pair):
                times.append(_timed(action))
            async_times.append(_timed(lambda step=step: lazy.save(step)))
            lazy.wait()
            shutil.rmtree(tmp / "bare")
            for side in ("sync", "async"):
                shutil.rmtree(tmp / side / f"step_{step - 1}", ignore_errors=True)
        lazy.close()
        ours, base = min(sync_times), min(bare_times)
        _line("save_sync", ours, base, ("save()", "bare dcp.save"), TARGET_SYNC)
        blocked = min(async_times[1:])  # the first one also allocates the staging buffers
        _line("save_async_block", blocked, ours, ("async save()", "sync save()"), TARGET_ASYNC)
        print(
            f"   medians: save() {statistics.median(sync_times):.2f} s, bare dcp.save "
            f"{statistics.median(bare_times):.2f} s, async save() "
            f"{statistics.median(async_times):.2f} s (first one {async_times[0]:.2f} s)",
            flush=True,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
