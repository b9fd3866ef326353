"""Statistics of one checkpoint: every number against torch on the fully loaded tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.export import checkpoint_stats
from kempnerforge.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ExportError,
)
from tests.checkpoint.export._ckpt import model_weights
from tests.checkpoint.export._inspect import close, edge_tensors, reference_stats, write_model

FIELDS = ("shape", "dtype", "numel", "l2_norm", "mean", "std", "min", "max", "abs_max",
          "nan_count", "inf_count", "zero_count")  # fmt: skip


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stats") / "ckpt"
    write_model(root, 5, edge_tensors())
    return root


@pytest.mark.parametrize("batch_bytes", [64 * 2**20, 1000])
def test_every_number_matches_torch(edge_root: Path, batch_bytes: int) -> None:
    tensors = edge_tensors()
    result = checkpoint_stats(edge_root, batch_bytes=batch_bytes)
    assert (result.step, result.source) == (5, edge_root / "step_5")
    assert [t.name for t in result.tensors] == list(tensors)
    for row in result.tensors:
        expected = reference_stats(tensors[row.name])
        actual = {f: getattr(row, f) for f in FIELDS}
        actual["shape"] = list(actual["shape"])
        bad = {f: (actual[f], expected[f]) for f in FIELDS if not close(actual[f], expected[f])}
        assert not bad, f"{row.name}: {bad}"
    finite = torch.cat([t.double().reshape(-1) for t in tensors.values()])
    finite = finite[torch.isfinite(finite)]
    assert result.total.tensors == len(tensors)
    assert result.total.numel == sum(t.numel() for t in tensors.values())
    assert close(result.total.l2_norm, float(finite.norm()))
    assert (result.total.nan_count, result.total.inf_count) == (5, 2)
    assert result.nonfinite


def test_json_document_has_the_documented_fields(edge_root: Path) -> None:
    document = checkpoint_stats(edge_root).to_json()
    json.dumps(document, allow_nan=False)  # no NaN/Infinity tokens: valid JSON
    assert set(document) == {"format", "format_version", "source", "step", "tensors", "total"}
    assert (document["format"], document["format_version"]) == ("kf-ckpt-stats", 1)
    assert set(document["tensors"][0]) == {"name", *FIELDS}
    assert set(document["total"]) == {"tensors", "numel", "l2_norm", "nan_count", "inf_count"}
    all_nan = next(t for t in document["tensors"] if t["name"] == "layers.1.all_nan")
    assert all_nan["l2_norm"] is None and all_nan["nan_count"] == 4
    zeros = next(t for t in document["tensors"] if t["name"] == "layers.0.attn.bias")
    assert (zeros["l2_norm"], zeros["std"], zeros["zero_count"]) == (0.0, 0.0, 48)


def test_include_and_exclude_narrow_the_tensors(edge_root: Path) -> None:
    result = checkpoint_stats(edge_root, include=["layers.*"], exclude=["*.bias", "*nan*"])
    assert [t.name for t in result.tensors] == [
        "layers.0.attn.weight", "layers.0.mlp.weight", "layers.1.attn.weight", "layers.1.poisoned",
    ]  # fmt: skip
    with pytest.raises(ExportError, match=r"no model tensors selected in .* \(nothing\.\*\)"):
        checkpoint_stats(edge_root, include=["nothing.*"])
    # Patterns may name the full dotted path too, as export's do.
    assert [t.name for t in checkpoint_stats(edge_root, include=["model.counts"]).tensors] == [
        "counts"
    ]


def test_clean_checkpoint_is_finite(tmp_path: Path) -> None:
    from tests.checkpoint.export._ckpt import trained_model

    model, _ = trained_model()
    weights = model_weights(model)
    write_model(tmp_path / "ckpt", 2, weights)
    result = checkpoint_stats(tmp_path / "ckpt" / "step_2")
    assert not result.nonfinite
    assert {t.name: t.dtype for t in result.tensors}["mask"] == "bool"
    for row in result.tensors:
        assert close(row.l2_norm, reference_stats(weights[row.name])["l2_norm"])


def test_two_rank_fsdp2_source(fsdp_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    step_dir, full = fsdp_checkpoint
    result = checkpoint_stats(step_dir)
    assert {t.name for t in result.tensors} == set(full)
    for row in result.tensors:
        expected = reference_stats(full[row.name])
        assert all(close(getattr(row, f), expected[f]) for f in FIELDS if f != "shape"), row.name


def test_errors(edge_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 6"):
        checkpoint_stats(edge_root, step=6)
    broken = tmp_path / "broken"
    shutil.copytree(edge_root, broken)
    (broken / "step_5" / ".metadata").unlink()
    with pytest.raises((CorruptCheckpointError, CheckpointNotFoundError)):
        checkpoint_stats(broken / "step_5")
    shutil.rmtree(broken)
    shutil.copytree(edge_root, broken)
    for shard in (broken / "step_5").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])  # truncated
    # A short shard makes the checkpoint corrupt before any tensor is read (the full check).
    with pytest.raises(CorruptCheckpointError, match=r"step_5 is corrupt \(shard .* is truncated"):
        checkpoint_stats(broken, step=5)
