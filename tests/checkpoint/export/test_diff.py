"""Diff of two checkpoints: every number against torch, exact grouping, the mismatch lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.export import diff_checkpoints
from kempnerforge.errors import CheckpointNotFoundError, ConfigError, ExportError
from tests.checkpoint.export._inspect import (
    close,
    edge_tensors,
    flat64,
    reference_diff,
    write_model,
)

ROW_FIELDS = ("l2_a", "l2_b", "l2_diff", "rel_diff", "cosine", "max_abs_diff")
FINITE = [
    "embed.weight", "layers.0.attn.weight", "layers.0.attn.bias", "layers.0.mlp.weight",
    "layers.1.attn.weight", "big.weight", "counts", "small_ints",
]  # fmt: skip


def _pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    a = {n: t for n, t in edge_tensors(0).items() if n in FINITE}
    b = {n: t for n, t in edge_tensors(1).items() if n in FINITE}
    b["layers.0.attn.bias"] = torch.linspace(-1, 1, 48)  # A's is all zero: rel_diff undefined
    a["only_a.weight"] = torch.ones(3)
    b["only_b.weight"] = torch.ones(3)
    a["reshaped"] = torch.ones(2, 3)
    b["reshaped"] = torch.ones(3, 2)
    a["zero_both"] = torch.zeros(5)
    b["zero_both"] = torch.zeros(5)
    return a, b


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    a, b = _pair()
    root = tmp_path_factory.mktemp("diff") / "ckpt"
    write_model(root, 10, a)
    write_model(root, 20, b)
    return root, a, b


def _check(row_json: dict, expected: dict) -> None:
    bad = {f: (row_json[f], expected[f]) for f in ROW_FIELDS if not close(row_json[f], expected[f])}
    assert not bad, f"{row_json.get('name')}: {bad}"


@pytest.mark.parametrize("batch_bytes", [64 * 2**20, 700])
def test_per_tensor_rows_match_torch(pair_root: tuple[Path, dict, dict], batch_bytes: int) -> None:
    root, a, b = pair_root
    result = diff_checkpoints(root, root, step_a=10, step_b=20, batch_bytes=batch_bytes)
    document = result.to_json()
    matched = [*FINITE, "zero_both"]
    assert sorted(r["name"] for r in document["rows"]) == sorted(matched)
    for row in document["rows"]:
        _check(row, reference_diff(flat64(a, [row["name"]]), flat64(b, [row["name"]])))
    _check(document["total"], reference_diff(flat64(a, matched), flat64(b, matched)))
    assert document["only_in_a"] == ["only_a.weight"]
    assert document["only_in_b"] == ["only_b.weight"]
    assert document["shape_mismatch"] == [
        {"name": "reshaped", "shape_a": [2, 3], "shape_b": [3, 2]}
    ]
    by_name = {r["name"]: r for r in document["rows"]}
    assert by_name["layers.0.attn.bias"]["rel_diff"] is None  # ‖A‖ = 0
    assert by_name["zero_both"]["cosine"] is None and by_name["zero_both"]["l2_diff"] == 0.0
    # Default order: rel_diff descending, undefined last.
    rels = [r["rel_diff"] for r in document["rows"]]
    defined = [r for r in rels if r is not None]
    assert defined == sorted(defined, reverse=True) and rels[len(defined) :] == [None, None]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_groups_aggregate_exactly(pair_root: tuple[Path, dict, dict], depth: int) -> None:
    root, a, b = pair_root
    result = diff_checkpoints(root / "step_10", root / "step_20", depth=depth, sort="name")
    matched = [*FINITE, "zero_both"]
    groups: dict[str, list[str]] = {}
    for name in matched:
        groups.setdefault(".".join(name.split(".")[:depth]), []).append(name)
    document = result.to_json()
    assert [r["name"] for r in document["rows"]] == sorted(groups)
    for row in document["rows"]:
        members = groups[row["name"]]
        _check(row, reference_diff(flat64(a, members), flat64(b, members)))
    assert (document["a"], document["b"]) == (
        {"path": str(root / "step_10"), "step": 10},
        {"path": str(root / "step_20"), "step": 20},
    )


def test_top_cuts_rows_not_the_total(pair_root: tuple[Path, dict, dict]) -> None:
    root, _, _ = pair_root
    full = diff_checkpoints(root, root, step_a=10, step_b=20)
    top = diff_checkpoints(root, root, step_a=10, step_b=20, top=2)
    assert top.rows == full.rows[:2] and top.total == full.total and top.matched == 9


def test_nan_propagates_and_json_stays_valid(tmp_path: Path) -> None:
    tensors = edge_tensors()
    write_model(tmp_path, 1, tensors)
    write_model(tmp_path, 2, {n: t * 2 for n, t in tensors.items()})
    document = diff_checkpoints(tmp_path, tmp_path, step_a=1, step_b=2, include=["layers.1.*"])
    text = json.dumps(document.to_json(), allow_nan=False)
    poisoned = next(r for r in json.loads(text)["rows"] if r["name"] == "layers.1.poisoned")
    assert poisoned["l2_diff"] is None and poisoned["max_abs_diff"] is None


def test_bad_arguments(pair_root: tuple[Path, dict, dict]) -> None:
    root, _, _ = pair_root
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 30"):
        diff_checkpoints(root, root, step_a=10, step_b=30)
    with pytest.raises(ConfigError, match="group depth must be at least 1, got 0"):
        diff_checkpoints(root, root, step_a=10, step_b=20, depth=0)
    with pytest.raises(ExportError, match="no model tensors selected"):
        diff_checkpoints(root, root, step_a=10, step_b=20, exclude=["*"])
