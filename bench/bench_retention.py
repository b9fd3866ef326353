"""Benchmark how long retention holds up the training thread after a save.

A many-rank checkpoint holds tens of thousands of shard files, and on a parallel file system
every ``stat`` and ``unlink`` is a round trip to a metadata server. Here a small model stands in
for the tensors and 20,000 entries added to each checkpoint (after its save, untimed) stand
in for the shards of a 2,000-rank run. Two managers in sync mode take turns, six saves each:

* ``retention_block``: the median time ``save()`` + ``wait()`` blocks the caller with
  ``keep_last_n=1`` and the extra files (each save makes the previous checkpoint a victim), over
  the same with ``keep_last_n=0`` and no extra files (no victim, nothing to walk). Target: at
  most 1.3x.
* ``trash_emptying``: how long the background thread takes to empty the trash of one victim
  (20,000 files), measured from the return of ``save()`` until ``.kf-trash`` is gone. Before
  each timed save the trash of the previous round is left to empty (untimed), as the minutes
  between two saves of a real run allow. Informational: no target.

A last figure, ``back_to_back``, saves again right after a save that made a 20,000-file victim,
so that save runs while the background thread is still deleting (both compete for the CPU and
the interpreter lock); it is printed for information, with how long ``close()`` then waited.
Run with ``python -m bench retention``.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

SAVES = 6
EXTRA_FILES = 20_000
TARGET = 1.3
_TRASH = ".kf-trash"
_EMPTY_TIMEOUT_S = 120.0


def _add_extra_files(step_dir: Path) -> None:
    """Stand-ins for the shards of a many-rank checkpoint, named as DCP names them.

    Hard links to one empty file: creating 200,000 inodes takes minutes on a busy disk, and
    each entry costs a walk one ``lstat`` and a removal one ``unlink`` all the same.
    """
    fd = os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open("__0_1.distcp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
        for i in range(1, EXTRA_FILES):
            os.link("__0_1.distcp", f"__{i}_1.distcp", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _trash_gone_after(root: Path) -> float:
    """Seconds until ``<root>/.kf-trash`` is gone or empty (the background emptier's work)."""
    start = time.perf_counter()
    trash = root / _TRASH
    while time.perf_counter() - start < _EMPTY_TIMEOUT_S:
        try:
            if not os.listdir(trash):
                break
        except FileNotFoundError:
            break
        time.sleep(0.002)
    return time.perf_counter() - start


def _timed_save(manager: object, step: int) -> float:
    start = time.perf_counter()
    manager.save(step)  # type: ignore[attr-defined]
    manager.wait()  # type: ignore[attr-defined]
    return time.perf_counter() - start


def main() -> None:
    """Time both sides, alternating, and print one line per figure."""
    import torch

    from kempnerforge.checkpoint.manager import CheckpointManager
    from kempnerforge.config.checkpoint import CheckpointConfig

    logging.getLogger("kempnerforge").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="torch.distributed is .*uninitialized")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    print(f"   {SAVES} sync saves per side, {EXTRA_FILES} extra files per checkpoint", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_retention_"))
    try:
        plain_root, heavy_root, rush_root = tmp / "plain", tmp / "heavy", tmp / "rush"
        plain = CheckpointManager(
            CheckpointConfig(dir=str(plain_root), keep_last_n=0), model, optimizer
        )
        heavy = CheckpointManager(
            CheckpointConfig(dir=str(heavy_root), keep_last_n=1), model, optimizer
        )
        plain_times: list[float] = []
        heavy_times: list[float] = []
        emptying: list[float] = []
        for step in range(1, SAVES + 1):
            pair = [
                (lambda step=step: _timed_save(plain, step), plain_times),
                (lambda step=step: _timed_save(heavy, step), heavy_times),
            ]
            for action, times in pair if step % 2 else reversed(pair):
                times.append(action())
            if step > 1:  # from the second save on, the previous checkpoint is a victim
                emptying.append(_trash_gone_after(heavy_root))
            _add_extra_files(heavy_root / f"step_{step}")
            # keep_last_n=0 keeps everything: drop the old ones untimed to keep the disk small.
            shutil.rmtree(plain_root / f"step_{step - 1}", ignore_errors=True)
        plain.close()
        heavy.close()

        rush = CheckpointManager(
            CheckpointConfig(dir=str(rush_root), keep_last_n=1), model, optimizer
        )
        rush_times: list[float] = []
        for step in range(1, 2 * SAVES + 2):
            took = _timed_save(rush, step)
            if step % 2 == 0:
                continue  # it just made a 20,000-file victim: the next save runs beside its removal
            if step > 1:
                rush_times.append(took)
            _add_extra_files(rush_root / f"step_{step}")  # the next save's victim
        start = time.perf_counter()
        rush.close()
        rush_close_s = time.perf_counter() - start

        ours, base = statistics.median(heavy_times), statistics.median(plain_times)
        ratio = ours / base
        verdict = "OK" if ratio <= TARGET else "MISS"
        print(
            f"retention.retention_block: keep_last_n=1 + {EXTRA_FILES} files {ours:.3f} s, "
            f"keep_last_n=0 no files {base:.3f} s, ratio {ratio:.2f}x "
            f"(target <= {TARGET:.2f}x) {verdict}",
            flush=True,
        )
        print(
            f"   save()+wait() each: keep_last_n=1 "
            f"[{', '.join(f'{t:.3f}' for t in heavy_times)}] s; keep_last_n=0 "
            f"[{', '.join(f'{t:.3f}' for t in plain_times)}] s",
            flush=True,
        )
        if emptying:
            print(
                f"retention.trash_emptying: median {statistics.median(emptying):.3f} s per victim "
                f"of {EXTRA_FILES} files (max {max(emptying):.3f} s), in the background",
                flush=True,
            )
        print(
            f"retention.back_to_back: median save()+wait() {statistics.median(rush_times):.3f} s "
            f"({statistics.median(rush_times) / base:.2f}x) with the emptier still deleting; "
            f"close() waited {rush_close_s:.3f} s",
            flush=True,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
