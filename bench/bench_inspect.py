"""Benchmark ``kf-ckpt trace`` against the obvious loop and against the floor.

The root holds 8 checkpoints of a transformer-shaped model of about 256 MiB of fp32 parameters
plus AdamW state (``exp_avg`` and ``exp_avg_sq``, about 512 MiB), written with ``dcp.save`` as
the manager writes them; the weights drift from one checkpoint to the next.

* ours: the installed command, ``kf-ckpt trace ROOT --json``, in a child process.
* the obvious way: for each checkpoint, ``dcp_to_torch_save`` to a temporary file, ``torch.load``,
  and the same numbers with torch (norms in float64, the difference with the previous
  checkpoint's model kept in memory), in a child process.
* the floor: ``python -c "import torch"`` plus reading the model bytes of the 8 checkpoints (the
  byte ranges the metadata gives for the model part, with plain ``read`` calls).

Walls are those of the whole child processes (interpreter start and imports included), peak RSS
is the child's ``VmHWM``. Every file is read once before measuring, so all three runs see the
same (warm) page cache. Flatness: 16 checkpoints of the same model, and 8 of a model twice as
large, raise our peak RSS by at most 10% (those roots hold the model part only: trace never
reads the optimizer state).

Run with ``python -m bench inspect`` (or ``make bench BENCH=inspect``); the temp dir is removed
afterwards. It needs about 6 GiB of disk and a few minutes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench.bench_export import _gib, _line, _peak_rss_bytes

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 1024
VOCAB = 8192
MLP = 2816
LAYERS = 5  # about 256 MiB of fp32 parameters
TARGET_WALL_OBVIOUS = 0.25
TARGET_WALL_FLOOR = 1.5
TARGET_RSS = 0.25
TARGET_GROWTH = 1.1


def _model_state(layers: int) -> dict[str, Any]:
    import torch

    shapes = {"embed.weight": (VOCAB, HIDDEN), "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes |= {
            f"layers.{i}.attn.qkv.weight": (3 * HIDDEN, HIDDEN),
            f"layers.{i}.attn.out.weight": (HIDDEN, HIDDEN),
            f"layers.{i}.mlp.up.weight": (MLP, HIDDEN),
            f"layers.{i}.mlp.down.weight": (HIDDEN, MLP),
            f"layers.{i}.attn_norm.weight": (HIDDEN,),
            f"layers.{i}.mlp_norm.weight": (HIDDEN,),
        }
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _write_root(root: Path, count: int, layers: int, *, with_optimizer: bool) -> int:
    """``count`` checkpoints ``step_0, step_1, step_2, step_4, ...``; returns the param bytes."""
    import torch
    import torch.distributed.checkpoint as dcp

    model = _model_state(layers)
    steps = [0, *(2**k for k in range(count - 1))]
    for step in steps:
        state: dict[str, Any] = {"model": model}
        if with_optimizer:
            state["optimizer"] = {
                "state": {
                    name: {
                        "step": torch.tensor(float(step)),
                        "exp_avg": torch.full_like(param, 1e-3),
                        "exp_avg_sq": torch.full_like(param, 1e-6),
                    }
                    for name, param in model.items()
                },
                "param_groups": [{"lr": 3e-4, "params": list(model)}],
            }
        step_dir = root / f"step_{step}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(state, checkpoint_id=str(step_dir))
        (step_dir / "metadata.json").write_text(json.dumps({"step": step, "tokens_seen": step}))
        with torch.no_grad():  # drift: a smaller move at each doubling, as training slows down
            for param in model.values():
                param.mul_(1.0 - 0.01 / (step + 1)).add_(0.001)
    return sum(t.numel() * t.element_size() for t in model.values())


def _model_ranges(step_dir: Path) -> list[tuple[Path, int, int]]:
    """``(file, offset, length)`` of the model part's stored items (our own bench data)."""
    with open(step_dir / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    return [
        (step_dir / info.relative_path, info.offset, info.length)
        for index, info in metadata.storage_data.items()
        if metadata.planner_data[index.fqn][0] == "model"
    ]


def _child(kind: str, root: str) -> None:
    """One measured run in this process; prints its peak RSS as JSON."""
    if kind == "ours":
        from kempnerforge.cli.main import cli

        with open(os.devnull, "w") as sink:
            sys.stdout = sink
            try:
                cli(["trace", root, "--json"], standalone_mode=False)
            finally:
                sys.stdout = sys.__stdout__
    elif kind == "obvious":
        _obvious(Path(root))
    elif kind == "read":
        chunk = bytearray(16 * 2**20)
        for step_dir in sorted(Path(root).glob("step_*")):
            for path, offset, length in _model_ranges(step_dir):
                with open(path, "rb", buffering=0) as fh:
                    fh.seek(offset)
                    while length > 0:
                        got = fh.readinto(memoryview(chunk)[: min(length, len(chunk))])
                        if not got:
                            break
                        length -= got
    print(json.dumps({"peak_rss_bytes": _peak_rss_bytes()}))


def _obvious(root: Path) -> None:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    warnings.simplefilter("ignore", UserWarning)
    steps = sorted(int(p.name.split("_")[1]) for p in root.glob("step_*"))
    previous: dict[str, torch.Tensor] | None = None
    rows: dict[str, list[tuple[float, float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="kf-bench-obvious-") as tmp:
        for step in steps:
            full = Path(tmp) / "ckpt.pt"
            dcp_to_torch_save(root / f"step_{step}", full)
            model = torch.load(full, weights_only=False)["model"]
            full.unlink()
            for name, tensor in model.items():
                t64 = tensor.double()
                l2 = float(t64.norm())
                change = None
                if previous is not None:
                    change = float((t64 - previous[name].double()).norm()) / float(
                        previous[name].double().norm()
                    )
                rows.setdefault(name, []).append((l2, change))
            previous = model
    json.dumps(rows)


def _measure(kind: str, root: Path) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_inspect", kind, str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    wall_s = time.perf_counter() - start
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall_s}


def _import_torch_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def _warm(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(64 * 2**20):
                    pass


def main() -> None:
    """Write the roots, run the three ways in child processes, print the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="kf-bench-inspect-"))
    try:
        root = tmp / "eight"
        model_bytes = _write_root(root, 8, LAYERS, with_optimizer=True)
        on_disk = sum(p.stat().st_size for p in root.rglob("*.distcp"))
        print(
            f"   root: 8 checkpoints of {_gib(model_bytes)} fp32 params + AdamW "
            f"({_gib(on_disk)} on disk)",
            flush=True,
        )
        _warm(root)
        ours = _measure("ours", root)
        obvious = _measure("obvious", root)
        floor_s = _import_torch_s() + _measure("read", root)["wall_s"]
        _line(
            "trace.wall_vs_obvious",
            f"ours {ours['wall_s']:.1f} s",
            f"obvious (dcp_to_torch_save, torch.load, torch norms) {obvious['wall_s']:.1f} s",
            ours["wall_s"] / obvious["wall_s"],
            TARGET_WALL_OBVIOUS,
        )
        _line(
            "trace.wall_vs_floor",
            f"ours {ours['wall_s']:.1f} s",
            f"floor (import torch + read the model bytes) {floor_s:.1f} s",
            ours["wall_s"] / floor_s,
            TARGET_WALL_FLOOR,
        )
        _line(
            "trace.peak_rss",
            f"ours {_gib(ours['peak_rss_bytes'])}",
            f"obvious {_gib(obvious['peak_rss_bytes'])}",
            ours["peak_rss_bytes"] / obvious["peak_rss_bytes"],
            TARGET_RSS,
        )
        shutil.rmtree(root)
        for name, count, layers in (("sixteen", 16, LAYERS), ("double", 8, 2 * LAYERS + 2)):
            other = tmp / name
            other_bytes = _write_root(other, count, layers, with_optimizer=False)
            _warm(other)
            run = _measure("ours", other)
            _line(
                f"trace.peak_rss_growth.{name}",
                f"ours {_gib(run['peak_rss_bytes'])} with {count} checkpoints of "
                f"{_gib(other_bytes)} ({run['wall_s']:.1f} s)",
                f"{_gib(ours['peak_rss_bytes'])} with 8 of {_gib(model_bytes)}",
                run["peak_rss_bytes"] / ours["peak_rss_bytes"],
                TARGET_GROWTH,
            )
            shutil.rmtree(other)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _child(*sys.argv[1:3])
