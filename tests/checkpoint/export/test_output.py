"""Where an export goes: one file, the Hugging Face directory layout, shards, --force."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kempnerforge.checkpoint.export.exporter import export_safetensors
from kempnerforge.errors import OutputExistsError, Remedy
from tests.checkpoint.export._ckpt import cast, same_bits

Weights = dict[str, torch.Tensor]


def _load_dir(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def test_sharded_output_and_its_index(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    out = tmp_path / "hf"
    max_shard = 300  # bytes; the 16x8 bf16 embedding (256 B) fits, two of them do not
    result = export_safetensors(root, out, max_shard_size=max_shard)

    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and [p.name for p in shards] == [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
    ]
    assert result.files == tuple(shards) and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == result.size_bytes
    assert set(index["weight_map"]) == set(weights)
    for path in shards:
        with safe_open(path, framework="pt") as fh:
            names = set(fh.keys())
            assert fh.metadata()["dtype"] == "bfloat16"
        assert {n for n, f in index["weight_map"].items() if f == path.name} == names
        data_bytes = sum(t.numel() * t.element_size() for t in load_file(path).values())
        assert data_bytes <= max_shard
    exported = _load_dir(out)
    assert all(same_bits(exported[n], cast(t, torch.bfloat16)) for n, t in weights.items())
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_tensor_above_the_shard_size_gets_its_own_shard(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    export_safetensors(root, tmp_path / "hf", max_shard_size=1)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(weights)


def test_existing_output_is_refused_without_force(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    single = tmp_path / "w.safetensors"
    single.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="output exists") as refused:
        export_safetensors(root, single)
    assert refused.value.remedy is Remedy.force
    assert single.read_bytes() == b"precious"

    out = tmp_path / "hf"
    export_safetensors(root, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match=r"model\.safetensors"):
        export_safetensors(root, out, dtype="float32")
    assert (out / "model.safetensors").read_bytes() == before


def test_force_replaces_the_old_export_and_nothing_else(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    out = tmp_path / "hf"
    export_safetensors(root, out, max_shard_size=300)  # sharded, with an index
    (out / "config.json").write_text("{}")  # the user's file next to the weights
    (out / "model-00001-of-00099.safetensors.bak").write_text("not ours")

    export_safetensors(root, out, dtype="float32", force=True)  # one file now

    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model-00001-of-00099.safetensors.bak",
        "model.safetensors",
    ]
    exported = load_file(out / "model.safetensors")
    assert all(same_bits(exported[n], cast(t, torch.float32)) for n, t in weights.items())

    single = tmp_path / "w.safetensors"
    single.write_bytes(b"old")
    export_safetensors(root, single, force=True)
    assert set(load_file(single)) == set(weights)


def test_wrong_kind_of_output_is_refused_even_with_force(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(OutputExistsError, match="is a directory"):
        export_safetensors(root, tmp_path / "d.safetensors", force=True)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputExistsError, match="not a directory"):
        export_safetensors(root, tmp_path / "f", force=True)
    assert (tmp_path / "d.safetensors").is_dir() and (tmp_path / "f").read_text() == "a file"


def test_missing_parent_directories_are_created(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    result = export_safetensors(root, tmp_path / "a" / "b" / "w.safetensors")
    assert result.files == (tmp_path / "a" / "b" / "w.safetensors",)
    assert result.files[0].is_file()


def test_temp_files_of_a_killed_export_on_this_host_are_removed(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    out = tmp_path / "hf"
    out.mkdir()
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid runs no more: like an export killed with SIGKILL
    host = socket.gethostname()
    stale = out / f".model.safetensors.kf-tmp-{host}.{finished.pid}.00ff"
    running = out / f".model-00001-of-00002.safetensors.kf-tmp-{host}.{os.getppid()}.00ff"
    other_node = out / f".model.safetensors.kf-tmp-node42.{finished.pid}.00ff"
    not_ours = out / f".notes.txt.kf-tmp-{host}.{finished.pid}.00ff"
    for path in (stale, running, other_node, not_ours):
        path.write_text("partial")

    export_safetensors(root, out)

    assert not stale.exists()
    assert running.exists() and other_node.exists() and not_ours.exists()
    assert (out / "model.safetensors").is_file()
