"""--verify: every tensor read back and compared with the checkpoint's value cast."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.export.exporter import export_safetensors, verify_export
from kempnerforge.errors import VerifyError
from tests.checkpoint.export._ckpt import corrupt_after_write, flip_byte

Weights = dict[str, torch.Tensor]


def _data_offset(path: Path, name: str) -> int:
    """File offset of the first byte of tensor ``name``."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return 8 + length + json.loads(raw[8 : 8 + length])[name]["data_offsets"][0]


def test_a_good_export_verifies(weights_and_root: tuple[Weights, Path], tmp_path: Path) -> None:
    weights, root = weights_and_root
    result = export_safetensors(root, tmp_path / "hf", max_shard_size=300, verify=True)
    assert result.verified
    assert verify_export(root, tmp_path / "hf") == len(weights)


def test_a_corrupted_file_is_reported(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    path = tmp_path / "w.safetensors"
    export_safetensors(root, path, dtype="float32")
    flip_byte(path, _data_offset(path, "layers.1.weight") + 4 * 3)  # 4th element
    with pytest.raises(VerifyError, match=r"'layers.1.weight' differs .*flat index 3"):
        verify_export(root, path)


def test_a_truncated_shard_and_a_missing_tensor_are_reported(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    out = tmp_path / "hf"
    export_safetensors(root, out, max_shard_size=300)
    shard = sorted(out.glob("model-*.safetensors"))[1]
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 1)
    with pytest.raises(VerifyError) as info:
        verify_export(root, out)
    assert f"{shard.name}: cannot read" in str(info.value)
    assert "is missing from the output" in str(info.value)


def test_verify_during_export_publishes_nothing_on_mismatch(
    weights_and_root: tuple[Weights, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file corrupted between writing and verifying (a bad disk, say) is caught before it
    replaces anything: the old export stays, and no temporary file is left."""
    _, root = weights_and_root
    out = tmp_path / "hf"
    export_safetensors(root, out)
    before = (out / "model.safetensors").read_bytes()
    corrupt_after_write(monkeypatch, lambda tmp: flip_byte(tmp, _data_offset(tmp, "norm.weight")))
    with pytest.raises(VerifyError, match=r"'norm\.weight' differs.*nothing was published"):
        export_safetensors(root, out, force=True, verify=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
