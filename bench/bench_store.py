"""Benchmark the checkpoint store: scan + plan against ``du -sb``, apply against ``rm -rf``.

A synthetic root of 2,000 checkpoint directories of 20 files each (18 small DCP shards,
``.metadata`` and ``metadata.json``) is built in a temporary directory. Three figures, measured in
one run and interleaved so that both sides see the same page cache and the same neighbours:

* ``scan_plan_cold``: ``plan_retention(scan(root), config)`` with no scan cache on disk (every
  entry stat'ed once, every metadata.json read and parsed, the plan made, the cache written)
  over ``du -sb root`` (a stat of every entry in C). Target: at most 1.5x.
* ``scan_plan_warm``: the same with the scan cache in place, the usual case (every checkpoint
  but the newest is complete and unchanged: two ``lstat`` calls each instead of ~21). Target:
  at most 1.5x. ``du -sb`` runs on the same warm dentry and inode caches in both figures.
* ``apply``: ``apply_plan`` of a plan that deletes 500 of the 2,000 checkpoints (lock, re-check,
  rename into the trash, fsync, symlink-safe removal) over one ``rm -rf`` of 500 identical
  directories. Target: at most 1.3x.

Each figure is the median of several repetitions, du, cold and warm interleaved in rotating
order; the ratio is the median of the per-round ratios. Run with ``python -m bench store`` (or
``make bench``); the temp dir is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kempnerforge.checkpoint.store._scan_cache import RACY_WINDOW_S
from kempnerforge.checkpoint.store.apply import apply_plan
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.files import update_latest
from kempnerforge.checkpoint.store.layout import CACHE_NAME, step_dir_name
from kempnerforge.checkpoint.store.retention import RetentionPlan, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._trees import dcp_manifest

CHECKPOINTS = 2000
SHARDS = 18  # + .metadata + metadata.json = 20 files per checkpoint
SHARD_BYTES = 1024
VICTIMS = 500
SCAN_ROUNDS = 9
APPLY_ROUNDS = 3
TARGET_SCAN = 1.5
TARGET_APPLY = 1.3
INTERVAL = 100


_MANIFEST = dcp_manifest({f"__{i}_0.distcp": SHARD_BYTES for i in range(SHARDS)})


def _write_checkpoint(root: Path, step: int) -> None:
    step_dir = root / step_dir_name(step)
    step_dir.mkdir()
    payload = bytes(SHARD_BYTES)
    for i in range(SHARDS):
        (step_dir / f"__{i}_0.distcp").write_bytes(payload)
    (step_dir / ".metadata").write_bytes(_MANIFEST)
    document = {"step": step, "tokens_seen": step * 4096, "checkpoint": {"keep_last_n": 3}}
    (step_dir / "metadata.json").write_text(json.dumps(document))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _du(path: Path) -> None:
    subprocess.run(["du", "-sb", str(path)], check=True, stdout=subprocess.DEVNULL)


def _report(name: str, ours: list[float], base: list[float], base_name: str, target: float) -> None:
    ratio = statistics.median(o / b for o, b in zip(ours, base, strict=True))
    verdict = "OK" if ratio <= target else "MISS"
    print(
        f"store.{name}: ours {statistics.median(ours):.3f} s, {base_name} "
        f"{statistics.median(base):.3f} s, ratio {ratio:.2f}x (target <= {target}x) {verdict}  "
        f"[median of {len(ours)} rounds; best {min(ours):.3f} s vs {min(base):.3f} s]",
        flush=True,
    )


def _bench_scan_plan(root: Path, config: CheckpointConfig) -> None:
    cache = root / CACHE_NAME

    def ours() -> None:
        plan = plan_retention(scan(root), config)
        assert len(plan.decisions) == CHECKPOINTS

    def cold() -> float:
        cache.unlink(missing_ok=True)
        return _timed(ours)

    def warm() -> float:
        assert cache.is_file()
        return _timed(ours)

    ours(), _du(root)  # warm the dentry and inode caches for both, and write the scan cache
    assert scan(root).cache_hits == CHECKPOINTS
    runs: dict[str, Callable[[], float]] = {
        "du": lambda: _timed(lambda: _du(root)),
        "cold": cold,
        "warm": warm,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for i in range(SCAN_ROUNDS):  # rotate who goes first
        for name in order[i % 3 :] + order[: i % 3]:
            times[name].append(runs[name]())
    _report("scan_plan_cold", times["cold"], times["du"], "du -sb", TARGET_SCAN)
    _report("scan_plan_warm", times["warm"], times["du"], "du -sb", TARGET_SCAN)
    floor = [_timed(lambda: _lstat_all(root)) for _ in range(3)]
    print(
        f"   (floor of a cold scan: a bare Python lstat of every entry takes "
        f"{statistics.median(floor):.3f} s, "
        f"{statistics.median(floor) / statistics.median(times['du']):.2f}x du -sb; the rest is "
        f"reading 2,000 metadata.json files, building the records and writing the scan cache: "
        f"{cache.stat().st_size / 1e6:.2f} MB)",
        flush=True,
    )


def _lstat_all(root: Path) -> None:
    """The least a Python scan can do: one lstat per entry, nothing else."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root_fd = os.open(root, flags)
    try:
        for name in os.listdir(root_fd):
            os.lstat(name, dir_fd=root_fd)
            if name.startswith("step_"):
                fd = os.open(name, flags, dir_fd=root_fd)
                try:
                    for child in os.listdir(fd):
                        os.lstat(child, dir_fd=fd)
                finally:
                    os.close(fd)
    finally:
        os.close(root_fd)


def _bench_apply(root: Path, spare: Path, config: CheckpointConfig) -> None:
    victims = [s * INTERVAL for s in range(VICTIMS)]
    mine: list[float] = []
    base: list[float] = []
    for i in range(APPLY_ROUNDS):
        if i:  # the first round deletes the victims of the initial tree
            for step in victims:
                _write_checkpoint(root, step)
        spare.mkdir()
        for step in victims:
            _write_checkpoint(spare, step)
        os.sync()  # neither side pays for the other's writeback
        plan = plan_retention(scan(root), config)
        assert [d.step for d in plan.to_delete] == victims
        paths = [str(spare / step_dir_name(s)) for s in victims]

        def ours(plan: RetentionPlan = plan) -> None:
            result = apply_plan(plan)
            assert len(result.deleted) == VICTIMS and result.ok

        def rm(paths: list[str] = paths) -> None:
            subprocess.run(["rm", "-rf", *paths], check=True)

        if i % 2:
            mine.append(_timed(ours))
            base.append(_timed(rm))
        else:
            base.append(_timed(rm))
            mine.append(_timed(ours))
        shutil.rmtree(spare)
    _report("apply", mine, base, "rm -rf", TARGET_APPLY)


def main() -> None:
    """Build the synthetic root, print the two figures, remove everything."""
    with tempfile.TemporaryDirectory(prefix="kf-bench-store-") as tmp:
        root = Path(tmp) / "ckpt"
        root.mkdir()
        start = time.perf_counter()
        for s in range(CHECKPOINTS):
            _write_checkpoint(root, s * INTERVAL)
        last = (CHECKPOINTS - 1) * INTERVAL
        update_latest(root, last)
        os.sync()
        built_s = time.time()
        print(
            f"   built {CHECKPOINTS} checkpoints x {SHARDS + 2} files "
            f"in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        config = CheckpointConfig(keep_last_n=CHECKPOINTS - VICTIMS)
        # Real checkpoints are older than the cache's racy window (a just-written one is walked
        # again until it is 2 s old); the synthetic ones must be too.
        time.sleep(max(0.0, built_s + RACY_WINDOW_S + 0.1 - time.time()))
        _bench_scan_plan(root, config)
        _bench_apply(root, Path(tmp) / "spare", config)


if __name__ == "__main__":
    main()
