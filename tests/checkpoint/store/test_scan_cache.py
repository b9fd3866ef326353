"""The scan cache: a warm scan equals a cold one, every change forces a rewalk, bad caches are ignored."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store._cache_file import stamp_of
from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.collect import collect_garbage
from kempnerforge.checkpoint.store.files import temp_name, update_latest
from kempnerforge.checkpoint.store.layout import CACHE_NAME, DCP_METADATA
from kempnerforge.checkpoint.store.records import Catalog
from kempnerforge.config.checkpoint import CheckpointConfig
from tests.checkpoint._trees import (
    as_unprivileged,
    dcp_manifest,
    fingerprint,
    make_checkpoint,
    set_mtime,
    unprivileged_dir,
)

OLD_S = 1_600_000_000.0  # long before any scan: outside the racy window
CHECKPOINTS = 6  # in the tree of _aged_tree


def _aged_tree(root: Path) -> Path:
    """Complete checkpoints nobody writes to any more, in every shape scan records."""
    config = {"keep_last_n": 2, "interval": 100}
    make_checkpoint(root, 100, config=config, files=3, size=1000, mtime_s=OLD_S)
    make_checkpoint(root, 200, milestone=True, tokens_seen=7, mtime_s=OLD_S)
    make_checkpoint(root, 300, metadata="{corrupt", mtime_s=OLD_S)  # cached with its warning
    make_checkpoint(root, 400, pp_stages=2, files=2, mtime_s=OLD_S)
    make_checkpoint(root, 500, metadata=False, extra=None, mtime_s=OLD_S)
    nested = make_checkpoint(root, 600, mtime_s=OLD_S)
    (nested / "extra" / "deeper").mkdir(parents=True)
    (nested / "extra" / "deeper" / "notes.txt").write_text("x")
    set_mtime(nested, OLD_S)
    update_latest(root, 600)
    return root


def _without_time(catalog: Catalog) -> Catalog:
    return dataclasses.replace(catalog, scanned_at_s=None)


def _warm(root: Path) -> Catalog:
    """Scan twice (the first fills the cache) and return the second scan."""
    scan(root)
    return scan(root)


def test_a_cache_hit_gives_the_catalog_of_a_cold_scan(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    first = scan(root)
    assert first.cache_hits == 0 and (root / CACHE_NAME).is_file()
    cache_mtime_ns = (root / CACHE_NAME).stat().st_mtime_ns
    warm = scan(root)
    cold = scan(root, use_cache=False)
    assert warm.cache_hits == CHECKPOINTS and cold.cache_hits == 0
    assert _without_time(warm) == _without_time(cold) == _without_time(first)
    assert warm.get(300).warnings and warm.get(200).dynamic_milestone  # type: ignore[union-attr]
    assert warm.get(100).recorded_config == {"keep_last_n": 2, "interval": 100}  # type: ignore[union-attr]
    assert CACHE_NAME not in {s.name for s in warm.skipped}  # a toolkit entry, never reported
    assert (
        root / CACHE_NAME
    ).stat().st_mtime_ns == cache_mtime_ns  # nothing changed: not rewritten
    assert json.loads((root / CACHE_NAME).read_text())["format"] == "kf-ckpt-scan-cache"


def _add_file(root: Path) -> None:
    (root / "step_100" / "added.bin").write_bytes(b"new")


def _remove_file(root: Path) -> None:
    (root / "step_100" / "__0_0.distcp").unlink()


def _add_in_stage(root: Path) -> None:
    (root / "step_400" / "pp1" / "added.distcp").write_bytes(b"x" * 10)


def _remove_stage_marker(root: Path) -> None:
    (root / "step_400" / "pp0" / DCP_METADATA).unlink()


def _add_deep(root: Path) -> None:
    (root / "step_600" / "extra" / "deeper" / "more.txt").write_text("y")


def _rename_in_dir(root: Path) -> None:
    (root / "step_100" / "train_state.pt").rename(root / "step_100" / "train_state.old")


def _rewrite_metadata_in_place(root: Path) -> None:
    path = root / "step_200" / "metadata.json"
    path.write_text(json.dumps({"step": 200, "tokens_seen": 9, "dynamic_milestone": False}))


def _rewrite_metadata_keeping_its_mtime(root: Path) -> None:
    # Same size, old mtime restored: only the inode's ctime tells (as for git's index).
    path = root / "step_100" / "metadata.json"
    before = os.lstat(path)
    text = path.read_text().replace('"tokens_seen": 100000', '"tokens_seen": 999999')
    while True:
        with open(path, "r+") as fh:
            fh.write(text)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.lstat(path).st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)  # the same clock tick as the build: make the change visible


def _replace_dir(root: Path) -> None:
    (root / "step_100").rename(root.parent / "old_step_100")  # keeps its inode busy
    make_checkpoint(root, 100, complete=False, files=1, mtime_s=OLD_S)  # same name, same mtime


INVALIDATIONS: dict[str, tuple[Callable[[Path], None], int]] = {
    "file-added-in-step-dir": (_add_file, 100),
    "file-removed-in-step-dir": (_remove_file, 100),
    "file-renamed-in-step-dir": (_rename_in_dir, 100),
    "file-added-in-pp-stage": (_add_in_stage, 400),
    "marker-removed-in-pp-stage": (_remove_stage_marker, 400),
    "file-added-two-levels-down": (_add_deep, 600),
    "metadata-json-rewritten-in-place": (_rewrite_metadata_in_place, 200),
    "metadata-json-rewritten-same-size-and-mtime": (_rewrite_metadata_keeping_its_mtime, 100),
    "dir-replaced-by-another-of-the-same-name": (_replace_dir, 100),
}


@pytest.mark.parametrize("change", INVALIDATIONS, ids=list(INVALIDATIONS))
def test_each_change_forces_a_rewalk(tmp_path: Path, change: str) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    before = scan(root)  # fills the cache
    mutate, step = INVALIDATIONS[change]
    mutate(root)
    warm = scan(root)
    cold = scan(root, use_cache=False)
    assert warm.cache_hits == CHECKPOINTS - 1  # only the changed checkpoint was walked again
    assert _without_time(warm) == _without_time(cold)
    assert warm.get(step) != before.get(step)  # and what changed shows


def test_incomplete_and_racy_checkpoints_are_never_cached(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_checkpoint(root, 100, mtime_s=OLD_S)
    make_checkpoint(root, 200, complete=False, mtime_s=OLD_S)  # abandoned: still walked each time
    make_checkpoint(root, 300, mtime_s=time.time() + 1)  # within the racy window (clock skew)
    make_checkpoint(root, 400)  # just written
    scan(root)
    entries = json.loads((root / CACHE_NAME).read_text())["entries"]
    assert sorted(entries) == ["step_100"]
    assert scan(root).cache_hits == 1
    (root / "step_200" / DCP_METADATA).write_bytes(dcp_manifest({}))  # finished late: complete
    assert not scan(root).get(200).incomplete_reason  # type: ignore[union-attr]


def test_a_fresh_root_writes_no_cache(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1)  # written just now: racy, so nothing is cacheable
    assert scan(tmp_path).cache_hits == 0
    assert not (tmp_path / CACHE_NAME).exists()


CORRUPT_CACHES: dict[str, bytes] = {
    "garbage": b"\x00\xffnot json",
    "truncated": b'{"format": "kf-ckpt-scan-cache", "version": 1, "entries": {"step_100": {',
    "foreign-json": b'{"format": "something-else", "version": 1, "entries": {}}',
    "future-version": b'{"format": "kf-ckpt-scan-cache", "version": 99, "entries": {}}',
    "not-an-object": b"[1, 2, 3]",
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("content", CORRUPT_CACHES.values(), ids=list(CORRUPT_CACHES))
def test_a_corrupt_or_foreign_cache_counts_as_empty(tmp_path: Path, content: bytes) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    cold = scan(root, use_cache=False)
    (root / CACHE_NAME).write_bytes(content)
    catalog = scan(root)
    assert catalog.cache_hits == 0 and _without_time(catalog) == _without_time(cold)
    assert scan(root).cache_hits == CHECKPOINTS  # rewritten whole by the first scan


def test_forged_or_mistyped_entries_are_walked_again(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    cold = scan(root, use_cache=False)
    scan(root)
    doc = json.loads((root / CACHE_NAME).read_text())
    entries = doc["entries"]
    entries["step_100"][6] = "huge"  # size_bytes
    entries["step_200"][4] = "yes"  # dynamic_milestone
    entries["step_300"][1]["../../etc"] = entries["step_300"][0]  # a stamp outside the tree
    entries["step_400"].append(1)  # one field too many
    entries["step_500"][2] = [1, 2, 3]  # metadata.json's stamp
    entries["step_600"][5] = 99  # no such recorded config
    (root / CACHE_NAME).write_text(json.dumps(doc))
    catalog = scan(root)
    assert catalog.cache_hits == 0 and _without_time(catalog) == _without_time(cold)


def test_an_oversized_cache_is_not_read(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    with open(root / CACHE_NAME, "wb") as fh:
        fh.truncate(300 * 2**20)  # sparse: costs no disk
    assert scan(root).cache_hits == 0
    assert (root / CACHE_NAME).stat().st_size < 2**20  # replaced by a real one


def test_a_symlinked_cache_is_neither_read_nor_followed(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    scan(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / CACHE_NAME).rename(outside / "valid-cache")  # a valid cache, reached via a link
    os.symlink(outside / "valid-cache", root / CACHE_NAME)
    before = fingerprint(outside)
    assert scan(root).cache_hits == 0  # not read through the link
    assert fingerprint(outside) == before  # not written through it either
    assert not (root / CACHE_NAME).is_symlink()  # the link itself was replaced
    assert scan(root).cache_hits == CHECKPOINTS


def test_a_cache_path_that_is_a_directory_is_left_alone(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    (root / CACHE_NAME).mkdir()
    (root / CACHE_NAME / "keep.txt").write_text("mine")
    assert _without_time(scan(root)) == _without_time(scan(root, use_cache=False))
    assert (root / CACHE_NAME / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(root)).count(CACHE_NAME) == 1  # no temp file left behind
    assert not [n for n in os.listdir(root) if n.endswith(".tmp")]


def test_stale_temp_files_are_removed_and_never_reported(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    stale, fresh = root / temp_name(CACHE_NAME), root / temp_name(CACHE_NAME)
    stale.write_text("left by a killed scan")
    os.utime(stale, (OLD_S, OLD_S))
    fresh.write_text("another scan is writing this one")
    catalog = scan(root)
    assert not stale.exists() and fresh.exists()
    assert {s.name for s in catalog.skipped} == {"latest"}


def test_use_cache_false_neither_reads_nor_writes(tmp_path: Path) -> None:
    root = _aged_tree(tmp_path / "ckpt")
    assert scan(root, use_cache=False).cache_hits == 0
    assert not (root / CACHE_NAME).exists()
    scan(root)
    assert scan(root, use_cache=False).cache_hits == 0


def test_a_read_only_root_still_scans(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = base / "ckpt"

        def scenario() -> tuple[list[int], list[int], list[str], int]:
            _aged_tree(root)
            root.chmod(0o555)
            try:
                read_only = [scan(root).cache_hits, scan(root).cache_hits]
                listing = sorted(os.listdir(root))
                root.chmod(0o755)
                scan(root)  # writable again: the cache is written
                root.chmod(0o555)
                warm = [scan(root).cache_hits]  # and read from a read-only root
                return read_only, warm, listing, len(scan(root).checkpoints)
            finally:
                root.chmod(0o755)

        read_only, warm, listing, count = as_unprivileged(scenario)
    assert read_only == [0, 0] and CACHE_NAME not in listing
    assert warm == [CHECKPOINTS] and count == CHECKPOINTS


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file another user owns")
def test_a_cache_of_another_user_is_ignored(tmp_path: Path) -> None:
    with unprivileged_dir(tmp_path) as base:
        root = _aged_tree(base / "ckpt")
        scan(root)  # root's cache
        shutil.chown(root, "nobody")
        assert as_unprivileged(lambda: scan(root).cache_hits) == 0


def test_gc_does_not_trust_a_cache_that_lies_about_completeness(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (100, 200, 300):
        make_checkpoint(root, step, mtime_s=OLD_S)
    scan(root)
    # step_300 loses its marker, and a forged cache still calls it complete: without a live
    # check, gc (keep_last_n=1) would keep step_300 and delete step_200, the newest real one.
    (root / "step_300" / DCP_METADATA).unlink()
    set_mtime(root / "step_300", OLD_S)
    doc = json.loads((root / CACHE_NAME).read_text())
    forged = doc["entries"]["step_300"]
    forged[0] = list(stamp_of(os.lstat(root / "step_300")))
    forged[2] = list(stamp_of(os.lstat(root / "step_300" / "metadata.json")))
    (root / CACHE_NAME).write_text(json.dumps(doc))
    assert scan(root).get(300).complete  # type: ignore[union-attr]  # the lie is served
    result = collect_garbage(root, CheckpointConfig(keep_last_n=1))
    assert not result.catalog.get(300).complete  # type: ignore[union-attr]  # walked for real
    assert result.applied is not None and [d.step for d in result.applied.deleted] == [100]
    assert sorted(p.name for p in root.glob("step_*")) == ["step_200", "step_300"]


def test_each_distinct_recorded_config_is_stored_once(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (100, 200, 300):
        make_checkpoint(root, step, config={"keep_last_n": 1, "interval": 100}, mtime_s=OLD_S)
    make_checkpoint(root, 400, config={"keep_last_n": True, "interval": 100}, mtime_s=OLD_S)
    make_checkpoint(root, 500, config={"keep_last_n": 1.0, "interval": 100}, mtime_s=OLD_S)
    cold = scan(root)
    doc = json.loads((root / CACHE_NAME).read_text())
    # true and 1.0 compare equal to 1 in Python, but they are other configs: kept apart.
    assert doc["configs"] == [
        {"keep_last_n": 1, "interval": 100},
        {"keep_last_n": True, "interval": 100},
        {"keep_last_n": 1.0, "interval": 100},
    ]
    assert [doc["entries"][f"step_{s}"][5] for s in (100, 200, 300, 400, 500)] == [0, 0, 0, 1, 2]
    make_checkpoint(root, 600, config={"keep_last_n": 1, "interval": 100}, mtime_s=OLD_S)
    warm = scan(root)  # five hits share their configs' dicts; the walked one is equal to one
    assert warm.cache_hits == 5
    assert json.loads((root / CACHE_NAME).read_text())["configs"] == doc["configs"]
    recorded = {s: warm.get(s).recorded_config for s in (100, 400, 500, 600)}  # type: ignore[union-attr]
    assert type(recorded[400]["keep_last_n"]) is bool  # type: ignore[index]
    assert type(recorded[500]["keep_last_n"]) is float  # type: ignore[index]
    assert _without_time(warm) == _without_time(scan(root, use_cache=False))
    assert _without_time(cold) != _without_time(warm)  # step_600 is new


_LAZY = (
    "kempnerforge.checkpoint.store._walk",
    "kempnerforge.checkpoint.store._facts",
    "kempnerforge.checkpoint.store._manifest",
    "pickle",
    "logging",
)
"""What ``kf-ckpt ls`` served by the cache (scan, config, plan) has no use for: never imported."""


def test_a_warm_verified_scan_imports_neither_the_walk_nor_the_manifest_reader(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ckpt"
    for step in (100, 200):
        make_checkpoint(root, step, mtime_s=OLD_S)
    assert scan(root, verify=True).cache_hits == 0  # walks, verifies, records both verdicts
    code = (
        "import sys\n"
        "from kempnerforge.checkpoint.store.retention import plan_retention\n"
        "from kempnerforge.checkpoint.store.selection import scan_root\n"
        "catalog, selection = scan_root(sys.argv[1], None, (), verify=True)\n"  # as ls does
        "plan_retention(catalog, selection.config)\n"
        "print(catalog.cache_hits, all(c.verified for c in catalog.checkpoints))\n"
        f"print(sorted(set(sys.modules) & {set(_LAZY)!r}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.splitlines() == ["2 True", "[]"]
