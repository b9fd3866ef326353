"""Checkpoints with chosen tensor values for the inspection tests, and torch's own answers.

Each checkpoint is ``dcp.save({"model": tensors, "optimizer": ...})`` as the manager writes it;
the optimizer part holds AdamW-like moments that the inspection must never read. The reference
numbers are computed by torch on the fully loaded tensors in float64.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kempnerforge.checkpoint.store.files import write_json_atomic
from kempnerforge.checkpoint.store.layout import step_dir_name
from tests.checkpoint.export._ckpt import dcp_save

Tensors = dict[str, torch.Tensor]


def write_model(
    root: Path, step: int, model: Tensors, *, config: dict[str, Any] | None = None
) -> Path:
    """``<root>/step_<step>`` holding ``model`` and a matching optimizer state."""
    step_dir = root / step_dir_name(step)
    moments = {
        name: {"exp_avg": torch.ones_like(t, dtype=torch.float32)}
        for name, t in model.items()
        if t.is_floating_point()
    }
    dcp_save({"model": dict(model), "optimizer": {"state": moments}}, step_dir)
    document: dict[str, Any] = {"step": step, "tokens_seen": step * 100}
    if config is not None:
        document["checkpoint"] = config
    write_json_atomic(step_dir / "metadata.json", document)
    return step_dir


def edge_tensors(seed: int = 0) -> Tensors:
    """fp32, bf16 and integer tensors; NaN, Inf, zeros, an all-zero and an all-NaN tensor.

    ``big.weight`` spans more than one float64 slice (2**20 elements), so slices are merged.
    """
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, 48, generator=g) * 0.02 + 0.5
    weight[0, :5] = 0.0
    poisoned = torch.randn(32, generator=g)
    poisoned[3] = math.nan
    poisoned[7] = math.inf
    poisoned[9] = -math.inf
    poisoned[11] = 0.0
    return {
        "embed.weight": torch.randn(40, 16, generator=g),
        "layers.0.attn.weight": weight,
        "layers.0.attn.bias": torch.zeros(48),
        "layers.0.mlp.weight": (torch.randn(48, 32, generator=g) * 3).to(torch.bfloat16),
        "layers.1.attn.weight": torch.randn(64, 48, generator=g) * 1e3,
        "layers.1.poisoned": poisoned,
        "layers.1.all_nan": torch.full((4,), math.nan),
        "big.weight": torch.randn(2**20 + 12_345, generator=g) + 3.0,
        "counts": torch.randint(-1000, 1000, (17,), generator=g, dtype=torch.int64),
        "small_ints": torch.tensor([0, 1, 2, 0, 5], dtype=torch.int32),
    }


def reference_stats(t: torch.Tensor) -> dict[str, Any]:
    """What ``kf-ckpt stats`` must report for ``t``, computed by torch on the whole tensor."""
    v = t.double().reshape(-1)
    f = v[torch.isfinite(v)]
    some = f.numel() > 0
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "numel": t.numel(),
        "l2_norm": float(torch.linalg.vector_norm(f)) if some else None,
        "mean": float(f.mean()) if some else None,
        "std": float(f.std(correction=0)) if some else None,
        "min": float(f.min()) if some else None,
        "max": float(f.max()) if some else None,
        "abs_max": float(f.abs().max()) if some else None,
        "nan_count": int(torch.isnan(v).sum()),
        "inf_count": int(torch.isinf(v).sum()),
        "zero_count": int((v == 0).sum()),
    }


def flat64(tensors: Tensors, names: list[str]) -> torch.Tensor:
    """The named tensors as one float64 vector (a group, as the diff and trace define it)."""
    return torch.cat([tensors[n].double().reshape(-1) for n in names])


def reference_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | None]:
    """The diff row of two vectors, computed by torch."""
    l2_a, l2_b = float(a.norm()), float(b.norm())
    l2_diff = float((b - a).norm())
    return {
        "l2_a": l2_a,
        "l2_b": l2_b,
        "l2_diff": l2_diff,
        "rel_diff": l2_diff / l2_a if l2_a else None,
        "cosine": float(torch.dot(a, b)) / (l2_a * l2_b) if l2_a and l2_b else None,
        "max_abs_diff": float((b - a).abs().max()),
    }


def close(actual: Any, expected: Any) -> bool:
    """Equal, with float64 rounding allowed on floats (None must match None)."""
    if expected is None or actual is None:
        return actual is expected
    if isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    return bool(actual == expected)
