"""export_safetensors: values, dtypes, names, sources (FSDP2, pp, manager), and what is read."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kempnerforge.checkpoint.export.exporter import export_safetensors
from kempnerforge.errors import ConfigError, CorruptCheckpointError, ExportError
from tests.checkpoint.export._ckpt import (
    byte_ranges,
    cast,
    dcp_save,
    model_weights,
    same_bits,
    scribble,
    trained_model,
    training_state,
    write_checkpoint,
)
from tests.checkpoint.export.conftest import STEP, TOKENS_SEEN

Weights = dict[str, torch.Tensor]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_export_equals_the_model_weights_cast(
    weights_and_root: tuple[Weights, Path], tmp_path: Path, dtype: str
) -> None:
    weights, root = weights_and_root
    result = export_safetensors(root, tmp_path / "out", dtype=dtype)

    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert set(exported) == set(weights)  # names drop the leading "model."
    target = getattr(torch, dtype)
    for name, tensor in weights.items():
        assert same_bits(exported[name], cast(tensor, target)), name
    assert exported["steps"].dtype == torch.int64 and int(exported["steps"]) == 7
    assert exported["mask"].dtype == torch.bool
    assert exported["scale"].dtype == target  # float16 buffer: floating, so cast
    assert result.files == (tmp_path / "out" / "model.safetensors",)
    assert (result.step, result.tensors, result.dtype) == (STEP, len(weights), dtype)
    assert result.size_bytes == sum(t.numel() * t.element_size() for t in exported.values())


def test_every_file_carries_metadata(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    export_safetensors(root, tmp_path / "w.safetensors", dtype="float32")
    with safe_open(tmp_path / "w.safetensors", framework="pt") as fh:
        metadata = fh.metadata()
    assert metadata == {
        "format": "pt",
        "step": str(STEP),
        "tokens_seen": str(TOKENS_SEEN),
        "dtype": "float32",
        "source": str((root / f"step_{STEP}").resolve()),
    }


def test_header_is_padded_to_eight_bytes(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    export_safetensors(root, tmp_path / "w.safetensors")
    raw = (tmp_path / "w.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    assert length % 8 == 0
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert len(raw) == 8 + length + end  # no trailing bytes


def test_tied_weights_become_two_tensors_sharing_no_storage(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    assert weights["embed.weight"].data_ptr() != 0 and torch.equal(
        weights["embed.weight"], weights["lm_head.weight"]
    )
    export_safetensors(root, tmp_path / "w.safetensors", dtype="float32")
    raw = (tmp_path / "w.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    a, b = header["embed.weight"]["data_offsets"], header["lm_head.weight"]["data_offsets"]
    assert a[1] <= b[0] or b[1] <= a[0]  # disjoint byte ranges
    loaded = load_file(tmp_path / "w.safetensors")
    assert torch.equal(loaded["embed.weight"], loaded["lm_head.weight"])


def test_model_part_is_selected_by_state_dict_path_not_prefix(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    state = training_state(model, optimizer)
    state["model.extra"] = torch.ones(3)  # top-level key whose flat name starts with "model."
    state["model_ema"] = {"embed.weight": torch.zeros(2)}
    state["model"]["notes"] = "a non-tensor entry inside the model"
    write_checkpoint(tmp_path / "ckpt", 1, state)

    result = export_safetensors(tmp_path / "ckpt", tmp_path / "w.safetensors")

    exported = load_file(tmp_path / "w.safetensors")
    assert set(exported) == set(model_weights(model))
    assert result.notes == ("skipped non-tensor model entry 'model.notes'",)


def test_cast_is_bit_exact_on_edge_values(tmp_path: Path) -> None:
    """DCP copies into the preallocated bfloat16 tensor with the rounding of ``Tensor.to``."""
    edge = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 3.4e38, 1.00390625, 1.01171875]
    )  # NaN, infinities, signed zero, a subnormal, overflow, and two round-to-even ties
    write_checkpoint(tmp_path / "ckpt", 1, {"model": {"edge": edge}})
    export_safetensors(tmp_path / "ckpt", tmp_path / "w.safetensors", dtype="bfloat16")
    assert same_bits(load_file(tmp_path / "w.safetensors")["edge"], edge.to(torch.bfloat16))


def test_small_batches_give_the_same_file(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    export_safetensors(root, tmp_path / "big.safetensors")
    export_safetensors(root, tmp_path / "small.safetensors", batch_bytes=1)  # one tensor a batch
    assert (tmp_path / "big.safetensors").read_bytes() == (
        tmp_path / "small.safetensors"
    ).read_bytes()


def test_optimizer_bytes_are_never_read(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    step_dir = root / f"step_{STEP}"
    optimizer_ranges = byte_ranges(step_dir, "optimizer")
    assert optimizer_ranges and byte_ranges(step_dir, "model")
    scribble(optimizer_ranges)
    # The scribbled bytes are really unreadable: loading the optimizer part fails ...
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with pytest.raises(CheckpointException):
        dcp_to_torch_save(step_dir, tmp_path / "full.pt")
    # ... while the export, which reads only the model's ranges, is unaffected.
    export_safetensors(root, tmp_path / "w.safetensors", dtype="float32", verify=True)
    exported = load_file(tmp_path / "w.safetensors")
    assert all(same_bits(exported[n], cast(t, torch.float32)) for n, t in weights.items())


def test_step_selection(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step, seed in ((5, 1), (9, 2)):
        model, optimizer = trained_model(seed)
        write_checkpoint(root, step, training_state(model, optimizer))
    newest = model_weights(model)
    (root / "step_12").mkdir()  # a save still in flight: not complete, so not the default
    assert export_safetensors(root, tmp_path / "a.safetensors", dtype="float32").step == 9
    assert same_bits(load_file(tmp_path / "a.safetensors")["embed.weight"], newest["embed.weight"])
    assert export_safetensors(root, tmp_path / "b.safetensors", step=5).step == 5
    assert export_safetensors(root / "step_5", tmp_path / "c.safetensors").step == 5


def test_incomplete_checkpoint_is_an_error_with_no_output(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    step_dir = write_checkpoint(tmp_path / "ckpt", 1, training_state(model, optimizer))
    (step_dir / ".metadata").unlink()  # the save was killed before DCP's last write
    out = tmp_path / "new" / "out"
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        export_safetensors(tmp_path / "ckpt", out, step=1)
    assert not (tmp_path / "new").exists()


def test_truncated_shard_is_corrupt_and_exports_nothing(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    step_dir = write_checkpoint(tmp_path / "ckpt", 1, training_state(model, optimizer))
    shard = next(step_dir.glob("*.distcp"))
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size // 3)
    out = tmp_path / "new" / "out"
    truncated = rf"is corrupt \(shard {shard.name} is truncated: {size // 3} of {size} bytes\)"
    with pytest.raises(CorruptCheckpointError, match=truncated) as info:
        export_safetensors(step_dir, out, batch_bytes=64)
    assert "kf-ckpt ls" in str(info.value)
    assert not (tmp_path / "new").exists()  # no file, no temp file, not even the directory


def test_failed_export_into_existing_dir_leaves_only_what_was_there(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    step_dir = write_checkpoint(tmp_path / "ckpt", 1, training_state(model, optimizer))
    out = tmp_path / "out"
    export_safetensors(step_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    scribble(byte_ranges(step_dir, "model"))
    with pytest.raises(ExportError):
        export_safetensors(step_dir, out, force=True, max_shard_size=100)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_corrupt_dcp_metadata_is_refused_without_unpickling_code(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    step_dir = write_checkpoint(tmp_path / "ckpt", 1, training_state(model, optimizer))
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (shutil.os.mkdir, (str(marker),))  # type: ignore[attr-defined]

    (step_dir / ".metadata").write_bytes(__import__("pickle").dumps(Exploit()))
    with pytest.raises(CorruptCheckpointError, match="not a DCP metadata type"):
        export_safetensors(step_dir, tmp_path / "w.safetensors")
    assert not marker.exists()


def test_bad_options_are_config_errors(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    with pytest.raises(ConfigError, match="bfloat16, float32, got 'float16'"):
        export_safetensors(root, tmp_path / "o", dtype="float16")
    with pytest.raises(ConfigError, match="max shard size"):
        export_safetensors(root, tmp_path / "o", max_shard_size=0)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_rank_fsdp2_checkpoint_is_reassembled(
    fsdp_checkpoint: tuple[Path, Weights], tmp_path: Path
) -> None:
    step_dir, reference = fsdp_checkpoint
    assert len(list(step_dir.glob("*.distcp"))) == 2  # one shard file per rank
    for dtype in (torch.float32, torch.bfloat16):
        out = tmp_path / f"{dtype}.safetensors"
        export_safetensors(step_dir, out, dtype=str(dtype).removeprefix("torch."), verify=True)
        exported = load_file(out)
        assert set(exported) == set(reference)
        for name, tensor in reference.items():
            assert same_bits(exported[name], cast(tensor, dtype)), name


def test_pipeline_stages_are_merged(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    state = training_state(model, optimizer)
    weights = model_weights(model)
    stage_names = [{"embed.weight", "layers.0.weight", "layers.0.bias", "steps", "mask"}]
    stage_names.append(set(weights) - stage_names[0])
    step_dir = tmp_path / "ckpt" / "step_4"
    for k, names in enumerate(stage_names):
        stage_state = {
            "model": {n: t for n, t in state["model"].items() if n in names},
            "optimizer": {
                "state": {n: s for n, s in state["optimizer"]["state"].items() if n in names}
            },
        }
        dcp_save(stage_state, step_dir / f"pp{k}")
    (step_dir / "metadata.json").write_text(json.dumps({"step": 4, "pp_stages": 2}))

    export_safetensors(tmp_path / "ckpt", tmp_path / "w.safetensors", dtype="float32")
    exported = load_file(tmp_path / "w.safetensors")
    assert set(exported) == set(weights)
    assert all(same_bits(exported[n], cast(t, torch.float32)) for n, t in weights.items())

    shutil.rmtree(step_dir / "pp1")  # metadata.json says 2 stages: now incomplete
    with pytest.raises(CorruptCheckpointError, match="pp1"):
        export_safetensors(tmp_path / "ckpt", tmp_path / "x.safetensors", step=4)


def test_manager_written_checkpoint(tmp_path: Path) -> None:
    from kempnerforge.checkpoint.manager import CheckpointManager
    from kempnerforge.config.checkpoint import CheckpointConfig

    model, optimizer = trained_model()
    manager = CheckpointManager(CheckpointConfig(dir=str(tmp_path / "run")), model, optimizer)
    try:
        step_dir = manager.save(20, tokens_seen=777)
    finally:
        manager.close()

    result = export_safetensors(tmp_path / "run", tmp_path / "hf", verify=True)
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    weights = model_weights(model)
    assert result.step_dir == step_dir and set(exported) == set(weights)
    assert all(same_bits(exported[n], cast(t, torch.bfloat16)) for n, t in weights.items())
    with safe_open(tmp_path / "hf" / "model.safetensors", framework="pt") as fh:
        assert fh.metadata()["tokens_seen"] == "777"
