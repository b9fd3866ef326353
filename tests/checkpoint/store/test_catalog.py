"""scan(): what a checkpoint root holds, including odd and hostile entries."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.catalog import check_root, scan
from kempnerforge.checkpoint.store.files import update_latest
from kempnerforge.checkpoint.store.layout import LOCK_NAME, TRASH_NAME
from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo
from kempnerforge.checkpoint.store.retention import Reason, plan_retention
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import CheckpointRootError
from tests.checkpoint._trees import (
    as_unprivileged,
    fingerprint,
    make_checkpoint,
    make_root,
    set_latest,
    unprivileged_dir,
)

OLD_S = 1_600_000_000.0  # an mtime far outside retention's in-flight grace period


def _du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_scan_reports_every_checkpoint(tmp_path: Path) -> None:
    config = {"keep_last_n": 2, "interval": 100}
    make_root(tmp_path, [100, 200], config=config, files=3, size=1000)
    make_checkpoint(tmp_path, 50, milestone=True, tokens_seen=7)
    make_checkpoint(tmp_path, 300, complete=False)
    update_latest(tmp_path, 200)
    catalog = scan(tmp_path)
    assert [c.step for c in catalog.checkpoints] == [50, 100, 200, 300]
    by_step = {c.step: c for c in catalog.checkpoints}
    assert [by_step[s].complete for s in (50, 100, 200, 300)] == [True, True, True, False]
    assert by_step[300].incomplete_reason == "no DCP .metadata"
    assert by_step[200].is_latest and not by_step[100].is_latest
    assert by_step[50].dynamic_milestone and not by_step[100].dynamic_milestone
    assert by_step[50].tokens_seen == 7 and by_step[100].tokens_seen == 100_000
    assert by_step[100].recorded_config == config and by_step[50].recorded_config is None
    # 3 shards + .metadata + train_state.pt + metadata.json
    assert by_step[100].file_count == 6 and by_step[300].file_count == 4
    assert by_step[100].path == tmp_path / "step_100" and by_step[100].name == "step_100"
    assert all(c.warnings == () for c in catalog.checkpoints)
    assert catalog.latest.step == 200 and catalog.latest_checkpoint == by_step[200]
    assert catalog.newest_complete == by_step[200]
    assert catalog.get(300) == by_step[300] and catalog.get(301) is None
    assert catalog.root == tmp_path and catalog.warnings == ()


@pytest.mark.parametrize("use_cache", [False, True])
def test_scanned_records_are_those_the_constructor_makes(tmp_path: Path, use_cache: bool) -> None:
    # Walked or taken from the cache, a scanned record is what the constructor makes.
    make_checkpoint(tmp_path, 100, config={"keep_last_n": 2}, mtime_s=OLD_S)
    make_checkpoint(tmp_path, 200, metadata="{corrupt", mtime_s=OLD_S)
    make_checkpoint(tmp_path, 300, complete=False)
    update_latest(tmp_path, 100)
    scan(tmp_path)  # fills the cache: the second scan takes 100 and 200 from it
    catalog = scan(tmp_path, use_cache=use_cache)
    assert catalog.cache_hits == (2 if use_cache else 0)
    names = [f.name for f in dataclasses.fields(CheckpointInfo)]
    for info in catalog.checkpoints:
        built = CheckpointInfo(**{name: getattr(info, name) for name in names})
        assert info == built and repr(info) == repr(built)
        assert sorted(vars(info)) == sorted(names)  # every field, nothing else
        assert pickle.loads(pickle.dumps(info)) == info
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.step = 1  # type: ignore[misc]


def test_sizes_match_du_apparent_size(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1, files=5, size=12345)
    make_checkpoint(tmp_path, 2, pp_stages=3, files=2, size=777)
    step_3 = make_checkpoint(tmp_path, 3, size=10)
    os.symlink("train_state.pt", step_3 / "alias")  # counted as a link, not its target
    catalog = scan(tmp_path)
    for c in catalog.checkpoints:
        assert c.size_bytes == _du_bytes(c.path), c.name
    assert catalog.total_size_bytes == sum(c.size_bytes for c in catalog.checkpoints)


def test_hard_links_are_counted_once(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 1, files=1, size=5000)
    os.link(step_dir / "__0_0.distcp", step_dir / "copy.distcp")
    info = scan(tmp_path).checkpoints[0]
    assert info.size_bytes == _du_bytes(step_dir)
    assert info.file_count == 4  # shard, .metadata, train_state.pt, metadata.json


def test_mtime_is_the_newest_entry(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 1)
    os.utime(step_dir, (1000, 1000))
    for child in step_dir.iterdir():
        os.utime(child, (2000, 2000))
    os.utime(step_dir / "train_state.pt", (5000, 5000))
    os.utime(step_dir, (1000, 1000))
    assert scan(tmp_path).checkpoints[0].mtime_s == 5000


def test_pipeline_parallel_checkpoints(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1, pp_stages=2)
    partial = make_checkpoint(tmp_path, 2, pp_stages=2)
    (partial / "pp1" / ".metadata").unlink()
    short = make_checkpoint(tmp_path, 3, pp_stages=2)
    shutil.rmtree(short / "pp1")
    by_step = {c.step: c for c in scan(tmp_path).checkpoints}
    assert by_step[1].complete
    assert by_step[2].incomplete_reason == "no DCP .metadata in pp1"
    assert by_step[3].incomplete_reason == "no DCP .metadata in pp1"  # recorded pp_stages=2


def test_non_checkpoints_are_skipped_with_reasons(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_checkpoint(outside, 9)
    root = tmp_path / "root"
    make_root(root, [1], latest=1)
    (root / "step_best").mkdir()
    (root / "step_7").write_text("not a dir")
    (root / "step_007").mkdir()
    os.symlink(outside / "step_9", root / "step_9")
    (root / "notes.txt").write_text("hi")
    (root / LOCK_NAME).write_text("")
    (root / TRASH_NAME).mkdir()
    (root / TRASH_NAME / "step_3.abc").mkdir()
    catalog = scan(root)
    assert [c.step for c in catalog.checkpoints] == [1]
    reasons = {s.name: (s.reason, s.toolkit_entry) for s in catalog.skipped}
    assert reasons == {
        ".kf-ckpt.lock": ("the gc lock file", True),
        ".kf-trash": ("the gc trash (1 entries left to remove)", True),
        "latest": ("the latest link -> step_1", True),
        "notes.txt": ("not a step_<N> name", False),
        "step_007": ("not a step_<N> name", False),
        "step_7": ("named like a checkpoint but not a directory", False),
        "step_9": ("a symlink named like a checkpoint; never followed", False),
        "step_best": ("not a step_<N> name", False),
    }
    assert all(s.path == root / s.name for s in catalog.skipped)
    assert catalog.trash_entries == 1
    assert any("left by an interrupted gc" in w for w in catalog.warnings)


@pytest.mark.parametrize("target", ["/etc", "..", "latest", "step_404", "../outside/step_9"])
def test_hostile_latest_is_ignored_and_nothing_is_latest(tmp_path: Path, target: str) -> None:
    make_checkpoint(tmp_path / "outside", 9)
    root = make_root(tmp_path / "root", [1, 2])
    set_latest(root, target)
    catalog = scan(root)
    assert catalog.latest.step is None
    assert not any(c.is_latest for c in catalog.checkpoints)
    assert len(catalog.warnings) == 1 and "ignored" in catalog.warnings[0]


def test_symlinks_inside_a_checkpoint_are_not_followed(tmp_path: Path) -> None:
    big = tmp_path / "outside"
    make_checkpoint(big, 1, files=50, size=10_000)
    (big / "huge.bin").write_bytes(b"x" * 200_000)
    root = tmp_path / "root"
    step_dir = make_checkpoint(root, 5)
    os.symlink(big / "huge.bin", step_dir / "file_link")
    os.symlink(big / "step_1", step_dir / "dir_link")
    os.symlink(big / "step_1", step_dir / "pp0")  # a symlinked "stage" is not a stage
    before = fingerprint(big)
    info = scan(root).checkpoints[0]
    assert info.size_bytes == _du_bytes(step_dir) < 10_000
    assert info.complete  # pp0 is a symlink, so this is a plain (non-pp) checkpoint
    assert fingerprint(big) == before


def test_corrupt_and_mistyped_metadata_are_warnings(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1, metadata="{oops")
    make_checkpoint(tmp_path, 2, metadata=False)
    make_checkpoint(
        tmp_path,
        3,
        tokens_seen="many",  # type: ignore[arg-type]
        extra={"dynamic_milestone": "yes", "checkpoint": [1, 2], "step": 30},
    )
    by_step = {c.step: c for c in scan(tmp_path).checkpoints}
    assert by_step[1].complete and by_step[1].tokens_seen is None
    assert by_step[1].warnings[0].startswith("corrupt metadata.json")
    assert by_step[2].warnings == ("no metadata.json",)
    three = by_step[3]
    assert (three.tokens_seen, three.dynamic_milestone, three.recorded_config) == (
        None,
        False,
        None,
    )
    assert len(three.warnings) == 4
    assert "records step 30, the directory is step 3" in three.warnings[-1]


def test_missing_root_and_file_root_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointRootError, match="does not exist") as missing:
        scan(tmp_path / "nope")
    assert missing.value.exit_code == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointRootError, match="not a directory"):
        scan(tmp_path / "file")
    assert check_root(str(tmp_path)) == tmp_path


def test_empty_root(tmp_path: Path) -> None:
    before_s = time.time()
    catalog = scan(tmp_path)
    assert catalog == Catalog(
        root=tmp_path,
        checkpoints=(),
        skipped=(),
        latest=catalog.latest,
        scanned_at_s=catalog.scanned_at_s,
    )
    assert catalog.scanned_at_s is not None and before_s <= catalog.scanned_at_s <= time.time()
    assert catalog.newest_complete is None and catalog.total_size_bytes == 0
    assert os.listdir(tmp_path) == []  # nothing to cache: no cache file is written


def test_unreadable_entries_as_an_unprivileged_user(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = base / "ckpt"

        def scenario() -> tuple[Catalog, dict[int, Reason]]:
            make_root(root, [100, 200, 300, 400], latest=400)
            (root / "step_100").chmod(0o000)  # the whole checkpoint is unreadable
            (root / "step_200" / "__0_0.distcp").chmod(0o000)  # lstat still sizes it
            (root / "step_200" / "metadata.json").chmod(0o000)
            pp = make_checkpoint(root, 250, pp_stages=2, mtime_s=OLD_S)  # not in flight
            (pp / "pp1").chmod(0o000)
            extra = root / "step_300" / "logs"
            extra.mkdir()
            extra.chmod(0o000)
            catalog = scan(root)
            plan = plan_retention(catalog, CheckpointConfig(keep_last_n=1))
            for path in (root / "step_100", pp / "pp1", extra):
                path.chmod(0o755)  # let the cleanup remove them
            return catalog, {d.step: d.reason for d in plan.decisions}

        catalog, reasons = as_unprivileged(scenario)
    by_step = {c.step: c for c in catalog.checkpoints}
    assert by_step[100].scan_error == "cannot read step_100/" and not by_step[100].complete
    assert reasons[100] is Reason.unreadable
    assert by_step[200].complete and by_step[200].file_count == 5
    assert any("cannot read metadata.json" in w for w in by_step[200].warnings)
    assert by_step[250].scan_error == "cannot read pp1/" and reasons[250] is Reason.unreadable
    assert by_step[300].complete and any("logs/" in w for w in by_step[300].warnings)
    assert reasons[300] is Reason.beyond_keep_last_n and reasons[400] is Reason.latest


def test_core_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import kempnerforge.checkpoint.store.catalog, kempnerforge.checkpoint.store.retention\n"
        "import kempnerforge.checkpoint.store.collect, kempnerforge.checkpoint.store.layout\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
