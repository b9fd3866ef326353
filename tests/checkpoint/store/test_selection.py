"""Config selection: the recorded config read from disk and the one taken from a scan agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.layout import METADATA_JSON
from kempnerforge.checkpoint.store.selection import (
    ConfigSelection,
    recorded_config,
    recorded_config_of,
    select_config,
)
from kempnerforge.errors import ConfigError, Remedy
from tests.checkpoint._trees import make_checkpoint

OLD = {"keep_last_n": 1, "interval": 10}
NEW = {"keep_last_n": 4, "interval": 50}


def _newest_records(root: Path) -> None:
    make_checkpoint(root, 100, config=OLD)
    make_checkpoint(root, 200, config=NEW)


def _newest_is_in_flight(root: Path) -> None:
    make_checkpoint(root, 100, config=OLD)
    make_checkpoint(root, 200, config=NEW, complete=False)  # incomplete ones record it too


def _newest_records_nothing(root: Path) -> None:
    make_checkpoint(root, 100, config=OLD)
    make_checkpoint(root, 200)  # no "checkpoint" table
    make_checkpoint(root, 300, metadata=False)  # no metadata.json
    make_checkpoint(root, 400, metadata="{corrupt")
    make_checkpoint(root, 500, config=["not", "a", "table"])  # type: ignore[arg-type]


def _numeric_order_not_names(root: Path) -> None:
    make_checkpoint(root, 900, config=OLD)
    make_checkpoint(root, 1000, config=NEW)  # 'step_1000' < 'step_900' as text


def _non_checkpoints_are_ignored(root: Path) -> None:
    make_checkpoint(root, 100, config=OLD)
    outside = make_checkpoint(root.parent / "elsewhere", 900, config=NEW)
    (root / "step_900").symlink_to(outside)  # a step_N symlink: never a checkpoint
    make_checkpoint(root / "nested", 800, config=NEW)
    (root / "nested").rename(root / "step_0800")  # not canonical: not a checkpoint


def _nothing_recorded(root: Path) -> None:
    make_checkpoint(root, 100)


def _empty_root(root: Path) -> None:
    root.mkdir()


TREES: dict[str, tuple[Callable[[Path], None], dict[str, int] | None, int | None]] = {
    "newest-records": (_newest_records, NEW, 200),
    "newest-in-flight": (_newest_is_in_flight, NEW, 200),
    "newest-records-nothing": (_newest_records_nothing, OLD, 100),
    "numeric-order": (_numeric_order_not_names, NEW, 1000),
    "non-checkpoints": (_non_checkpoints_are_ignored, OLD, 100),
    "nothing-recorded": (_nothing_recorded, None, None),
    "empty-root": (_empty_root, None, None),
}


@pytest.mark.parametrize("tree", TREES, ids=list(TREES))
def test_the_scan_finds_the_config_that_reading_the_root_finds(tmp_path: Path, tree: str) -> None:
    build, expected, step = TREES[tree]
    root = tmp_path / "ckpt"
    build(root)
    from_disk = recorded_config(root)
    from_scan = recorded_config_of(scan(root))
    assert from_disk == from_scan
    if expected is None:
        assert from_scan is None
    else:
        assert from_scan is not None
        config, path = from_scan.config, from_scan.path
        assert (config.keep_last_n, config.interval) == (
            expected["keep_last_n"],
            expected["interval"],
        )
        assert path == root / f"step_{step}" / METADATA_JSON


@pytest.mark.parametrize(
    ("config_path", "overrides"),
    [(None, ()), (None, ("checkpoint.keep_last_n=7",)), ("job.toml", ("checkpoint.interval=3",))],
)
@pytest.mark.parametrize("tree", ["newest-records", "nothing-recorded"])
def test_select_config_with_a_catalog_selects_the_same(
    tmp_path: Path, tree: str, config_path: str | None, overrides: tuple[str, ...]
) -> None:
    root = tmp_path / "ckpt"
    TREES[tree][0](root)
    job = tmp_path / "job.toml"
    job.write_text("[checkpoint]\nkeep_last_n = 2\n")
    path = None if config_path is None else job
    plain = select_config(root, path, overrides)
    assert select_config(root, path, overrides, catalog=scan(root)) == plain
    expected_source = "file" if path else "recorded" if tree == "newest-records" else "defaults"
    assert isinstance(plain, ConfigSelection) and plain.source == expected_source


def test_an_invalid_recorded_config_is_the_same_error_either_way(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_checkpoint(root, 100, config=OLD)
    make_checkpoint(root, 200, config={"keep_last_n": "three"})
    messages = []
    for catalog in (None, scan(root)):
        with pytest.raises(ConfigError) as caught:
            select_config(root, catalog=catalog)
        messages.append(str(caught.value))
        assert caught.value.remedy is Remedy.config_file
    assert messages[0] == messages[1]
    assert str(root / "step_200" / METADATA_JSON) in messages[0]
    assert "checkpoint.keep_last_n" in messages[0]
    assert "--" not in messages[0]  # library messages name no CLI flag (the CLI adds it)


def test_a_missing_root_has_no_recorded_config(tmp_path: Path) -> None:
    assert recorded_config(tmp_path / "missing") is None
    assert select_config(tmp_path / "missing").source == "defaults"
