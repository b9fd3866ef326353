"""kempnerforge.checkpoint.store.verify and the torch-free manifest reader behind it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store._manifest import ManifestError, is_allowed_global, read_manifest
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.layout import CACHE_NAME, DCP_METADATA
from kempnerforge.checkpoint.store.verify import verify_checkpoint
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._trees import dcp_manifest, make_checkpoint, make_root, set_mtime


def test_a_whole_checkpoint_verifies(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 100, files=3, size=64)
    assert verify_checkpoint(step_dir).complete
    manifest = read_manifest(step_dir / DCP_METADATA)
    assert manifest.files == {f"__{i}_0.distcp": 64 for i in range(3)}


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda d: (d / "__1_0.distcp").unlink(),
            "shard __1_0.distcp named by .metadata is missing",
        ),
        (
            lambda d: (d / "__1_0.distcp").write_bytes(b"x"),
            "shard __1_0.distcp is truncated: 1 of 64",
        ),
        (lambda d: (d / DCP_METADATA).write_bytes(b""), "empty (0 bytes)"),
        (lambda d: (d / DCP_METADATA).write_bytes(b"\x80\x02}q"), "truncated"),
        (
            lambda d: (d / DCP_METADATA).write_bytes(dcp_manifest({"../../etc/passwd": 1})),
            "names a shard file outside its directory",
        ),
        (
            lambda d: (d / DCP_METADATA).write_bytes(
                dcp_manifest({"__0_0.distcp": 1}, extra_global=("builtins", "eval"))
            ),
            "builtins.eval is not a DCP metadata type",
        ),
    ],
)
def test_damage_makes_it_corrupt_with_the_reason(tmp_path: Path, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    step_dir = make_checkpoint(tmp_path, 100, files=2, size=64)
    damage(step_dir)
    verdict = verify_checkpoint(step_dir)
    assert (verdict.complete, verdict.corrupt) == (False, True)
    assert reason in (verdict.reason or "")


def test_pipeline_stages_are_each_verified_and_a_missing_marker_is_incomplete(tmp_path: Path):
    step_dir = make_checkpoint(tmp_path, 100, pp_stages=2, size=32)
    assert verify_checkpoint(step_dir).complete
    (step_dir / "pp1" / "__0_0.distcp").write_bytes(b"")
    verdict = verify_checkpoint(step_dir)
    assert (
        verdict.corrupt and verdict.reason == "shard pp1/__0_0.distcp is truncated: 0 of 32 bytes"
    )
    (step_dir / "pp1" / DCP_METADATA).unlink()
    verdict = verify_checkpoint(step_dir)
    assert (verdict.complete, verdict.corrupt) == (False, False)  # unfinished, not corrupt


def test_the_allowlist_admits_dcp_names_only() -> None:
    assert is_allowed_global("torch.distributed.checkpoint.metadata", "Metadata")
    assert is_allowed_global("torch", "bfloat16") and is_allowed_global("torch", "Size")
    for module, name in [
        ("os", "system"),
        ("builtins", "exec"),
        ("torch", "load"),
        ("subprocess", "run"),
    ]:
        assert not is_allowed_global(module, name)


def test_a_fifo_manifest_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / DCP_METADATA)
    with pytest.raises(ManifestError, match="not a regular file"):
        read_manifest(tmp_path / DCP_METADATA)


def test_ls_verdicts_are_cached_and_a_change_is_checked_again(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200], latest=200)
    set_mtime(root, 1_600_000_000)  # out of the cache's racy window
    catalog = scan(root, verify=True)
    assert [c.verified for c in catalog.checkpoints] == [True, True]
    entries = json.loads((root / CACHE_NAME).read_text())["entries"]
    assert all(entry[-1] is True for entry in entries.values())
    again = scan(root, verify=True)
    assert again.cache_hits == 2 and all(c.verified for c in again.checkpoints)
    (root / "step_100" / "__0_0.distcp").unlink()  # the directory's stamp changes
    damaged = scan(root, verify=True)
    assert damaged.get(100).corrupt and not damaged.get(100).complete  # type: ignore[union-attr]


def test_gc_verifies_what_its_deletions_rest_on_and_keeps_the_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_root(root, [100, 200, 300, 400], latest=400)
    (root / "step_300" / "__1_0.distcp").write_bytes(b"")  # corrupt, newer than the victims
    result = collect_garbage(root, CheckpointConfig(keep_last_n=2))
    assert result.applied is not None
    assert [d.step for d in result.applied.deleted] == [100]  # 200 takes 300's slot
    assert {d.step: d.reason.value for d in result.plan.decisions}[300] == "corrupt"
    assert [c.step for c in scan(root).checkpoints] == [200, 300, 400]
