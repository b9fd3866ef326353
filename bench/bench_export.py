"""Benchmark ``export_safetensors`` against the obvious export, each in its own process.

The checkpoint is a transformer-shaped model of about 1 GiB of fp32 parameters plus AdamW state
(``exp_avg`` and ``exp_avg_sq``, about 2 GiB), written with ``dcp.save`` exactly as the manager
writes it. The obvious export converts the whole checkpoint with ``dcp_to_torch_save``, loads it
with ``torch.load``, casts the model to bfloat16 and calls ``safetensors.torch.save_file``. Ours
streams the model part only. Wall time and peak RSS (``ru_maxrss``) are measured inside separate
child processes, after their imports, so neither run inherits the other's memory. A second, twice
as large model shows that our peak RSS does not grow with the checkpoint.

Run with ``python -m bench export`` (or ``make bench``); the temp dir is removed afterwards.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 2048
VOCAB = 8192
MLP = 5504
TARGET_WALL = 0.25
TARGET_RSS = 0.2
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


def _write_checkpoint(root: Path, layers: int, *, with_optimizer: bool) -> tuple[Path, int]:
    """``root/step_100`` with the model (and AdamW state); returns it and the param bytes."""
    import torch
    import torch.distributed.checkpoint as dcp

    model = _model_state(layers)
    state: dict[str, Any] = {"model": model}
    if with_optimizer:
        state["optimizer"] = {
            "state": {
                name: {
                    "step": torch.tensor(100.0),
                    "exp_avg": torch.randn_like(param) * 1e-3,
                    "exp_avg_sq": torch.rand_like(param) * 1e-6,
                }
                for name, param in model.items()
            },
            "param_groups": [{"lr": 3e-4, "params": list(model)}],
        }
    step_dir = root / "step_100"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(step_dir))
    (step_dir / "metadata.json").write_text(json.dumps({"step": 100, "tokens_seen": 10**9}))
    return step_dir, sum(t.numel() * t.element_size() for t in model.values())


def _child(kind: str, step_dir: str, out: str) -> None:
    """Run one export in this process and print its wall time and peak RSS as JSON."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from kempnerforge.checkpoint.export.exporter import export_safetensors

    warnings.simplefilter("ignore", UserWarning)
    start = time.perf_counter()
    if kind == "ours":
        export_safetensors(step_dir, out, dtype="bfloat16")
    elif kind == "obvious":
        full = Path(out).with_suffix(".pt")
        dcp_to_torch_save(step_dir, full)
        state = torch.load(full, weights_only=False)
        model = {
            name: t.to(torch.bfloat16) if t.is_floating_point() else t
            for name, t in state["model"].items()
        }
        save_file(model, out)
    wall_s = time.perf_counter() - start
    print(json.dumps({"wall_s": wall_s, "peak_rss_bytes": _peak_rss_bytes()}))


def _peak_rss_bytes() -> int:
    """This process's peak resident set size.

    ``VmHWM`` rather than ``getrusage().ru_maxrss``: the latter survives ``execve``, so a child
    would report the RSS of the parent it was forked from when that is larger.
    """
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(kind: str, step_dir: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_export", kind, str(step_dir), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _line(name: str, ours: str, base: str, ratio: float, target: float) -> None:
    verdict = "OK" if ratio <= target else "MISSED"
    print(f"{name}: {ours}, {base}, ratio {ratio:.2f}x (target <= {target}x) {verdict}", flush=True)


def main() -> None:
    """Write two checkpoints, run both exports in child processes, print the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="kf-bench-export-"))
    try:
        small, small_bytes = _write_checkpoint(tmp / "a", layers=6, with_optimizer=True)
        opt_bytes = sum(p.stat().st_size for p in small.glob("*.distcp")) - small_bytes
        sizes = f"{_gib(small_bytes)} fp32 params + ~{_gib(opt_bytes)} optimizer state"
        print(f"   checkpoint A: {sizes}", flush=True)
        baseline = _measure("imports", small, tmp / "none.safetensors")
        obvious = _measure("obvious", small, tmp / "obvious.safetensors")
        ours = _measure("ours", small, tmp / "ours.safetensors")
        _line(
            "export.wall",
            f"ours {ours['wall_s']:.1f} s",
            f"obvious (dcp_to_torch_save, torch.load, cast, save_file) {obvious['wall_s']:.1f} s",
            ours["wall_s"] / obvious["wall_s"],
            TARGET_WALL,
        )
        _line(
            "export.peak_rss",
            f"ours {_gib(ours['peak_rss_bytes'])}",
            f"obvious {_gib(obvious['peak_rss_bytes'])} "
            f"(python + torch alone: {_gib(baseline['peak_rss_bytes'])})",
            ours["peak_rss_bytes"] / obvious["peak_rss_bytes"],
            TARGET_RSS,
        )
        shutil.rmtree(tmp / "a")
        for name in ("obvious.safetensors", "obvious.pt", "ours.safetensors"):
            (tmp / name).unlink(missing_ok=True)
        large, large_bytes = _write_checkpoint(tmp / "b", layers=13, with_optimizer=False)
        ours_large = _measure("ours", large, tmp / "ours_large.safetensors")
        _line(
            "export.peak_rss_growth",
            f"ours {_gib(ours_large['peak_rss_bytes'])} at {_gib(large_bytes)} params "
            f"({ours_large['wall_s']:.1f} s)",
            f"{_gib(ours['peak_rss_bytes'])} at {_gib(small_bytes)} params",
            ours_large["peak_rss_bytes"] / ours["peak_rss_bytes"],
            TARGET_GROWTH,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
