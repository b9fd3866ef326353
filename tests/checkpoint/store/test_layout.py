"""The on-disk format: step names, completeness, the latest link and metadata.json reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store import files, layout
from kempnerforge.checkpoint.store.files import read_latest, update_latest
from kempnerforge.checkpoint.store.layout import (
    assess_complete,
    check_complete,
    parse_pp_stage,
    parse_step,
    step_dir_name,
)
from kempnerforge.checkpoint.store.recorded import pp_stages_of, read_metadata_json
from tests.checkpoint._trees import make_checkpoint, set_latest


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("step_0", 0),
        ("step_7", 7),
        ("step_1500", 1500),
        ("step_007", None),  # would alias step_7
        ("step_", None),
        ("step_-1", None),
        ("step_1a", None),
        ("step_best", None),
        ("Step_1", None),
        ("step_1 ", None),
        ("xstep_1", None),
        ("latest", None),
        (".kf-trash", None),
        ("step_١", None),  # a non-ASCII digit is not a step
    ],
)
def test_parse_step(name: str, step: int | None) -> None:
    assert parse_step(name) == step


def test_step_dir_name_round_trips_and_rejects_bad_steps() -> None:
    assert all(parse_step(step_dir_name(s)) == s for s in (0, 1, 10, 123456789))
    for bad in (-1, True, 1.0, "3"):
        with pytest.raises(ValueError, match="non-negative integer"):
            step_dir_name(bad)  # type: ignore[arg-type]


def test_parse_pp_stage_and_recorded_stages() -> None:
    assert [parse_pp_stage(n) for n in ("pp0", "pp12", "pp", "ppx", "pp1/", "xpp1")] == [
        0,
        12,
        None,
        None,
        None,
        None,
    ]
    assert pp_stages_of({"pp_stages": 4}) == 4
    assert pp_stages_of({"pp_stages": True}) is None
    assert pp_stages_of({"pp_stages": "4"}) is None
    assert pp_stages_of(None) is None


def test_complete_means_dcp_metadata_present(tmp_path: Path) -> None:
    done = make_checkpoint(tmp_path, 1)
    partial = make_checkpoint(tmp_path, 2, complete=False)
    assert check_complete(done).complete
    status = check_complete(partial)
    assert not status.complete and status.reason == "no DCP .metadata"


def test_metadata_symlink_to_a_file_counts_as_in_check_complete(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 1, complete=False)
    (tmp_path / "elsewhere").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", step_dir / ".metadata")
    assert check_complete(step_dir).complete


def test_pipeline_parallel_completeness(tmp_path: Path) -> None:
    full = make_checkpoint(tmp_path, 1, pp_stages=3)
    assert check_complete(full, pp_stages=3).complete
    (full / "pp1" / ".metadata").unlink()
    status = check_complete(full, pp_stages=3)
    assert not status.complete and status.reason == "no DCP .metadata in pp1"
    short = make_checkpoint(tmp_path, 2, pp_stages=2)
    assert check_complete(short).complete
    status = check_complete(short, pp_stages=4)
    assert not status.complete and status.reason == "no DCP .metadata in pp2, pp3"
    empty = tmp_path / "step_3"
    empty.mkdir()
    assert check_complete(empty, pp_stages=2).reason == "no pp*/ stage of 2 written"


@pytest.mark.parametrize(
    ("has", "stages", "pp", "complete", "reason"),
    [
        (True, {}, None, True, None),
        (False, {}, None, False, "no DCP .metadata"),
        (True, {}, 2, False, "no pp*/ stage of 2 written"),
        (False, {0: True, 1: True}, None, True, None),
        (False, {0: True, 1: False}, None, False, "no DCP .metadata in pp1"),
        (False, {0: True}, 3, False, "no DCP .metadata in pp1, pp2"),
        (True, {0: False}, None, False, "no DCP .metadata in pp0"),
    ],
)
def test_assess_complete_table(
    has: bool, stages: dict[int, bool], pp: int | None, complete: bool, reason: str | None
) -> None:
    status = assess_complete(has_dcp_metadata=has, stages=stages, pp_stages=pp)
    assert (status.complete, status.reason) == (complete, reason)


def test_read_metadata_json_good_and_with_dir_fd(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 5, milestone=True, config={"keep_last_n": 2})
    read = read_metadata_json(step_dir)
    assert read.warning is None and read.data is not None
    assert read.data["step"] == 5 and read.data["dynamic_milestone"] is True
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_metadata_json("step_5", dir_fd=fd) == read
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        (None, "no metadata.json"),
        ("{not json", "corrupt metadata.json"),
        ("[1, 2]", "corrupt metadata.json: not a JSON object"),
        ("", "corrupt metadata.json"),
        (b"\xff\xfe{}", "cannot read metadata.json"),
    ],
)
def test_read_metadata_json_bad_files_are_warnings(
    tmp_path: Path, content: str | bytes | None, warning: str
) -> None:
    step_dir = make_checkpoint(tmp_path, 1, metadata=False if content is None else content)
    read = read_metadata_json(step_dir)
    assert read.data is None
    assert read.warning is not None and read.warning.startswith(warning)


def test_read_metadata_json_never_follows_a_symlink(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 1, metadata=False)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"dynamic_milestone": True}))
    os.symlink(outside, step_dir / "metadata.json")
    read = read_metadata_json(step_dir)
    assert read.data is None and read.warning == "metadata.json is a symlink; ignored"


def test_read_metadata_json_fifo_and_directory_do_not_block_or_crash(tmp_path: Path) -> None:
    fifo_dir = make_checkpoint(tmp_path, 1, metadata=False)
    os.mkfifo(fifo_dir / "metadata.json")
    assert read_metadata_json(fifo_dir).data is None  # returns at once: no writer, no block
    dir_dir = make_checkpoint(tmp_path, 2, metadata=False)
    (dir_dir / "metadata.json").mkdir()
    read = read_metadata_json(dir_dir)
    assert read.data is None and "cannot read metadata.json" in (read.warning or "")


def test_read_metadata_json_refuses_a_huge_file(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path, 1, metadata=False)
    with open(step_dir / "metadata.json", "wb") as fh:
        fh.truncate(64 * 2**20)  # sparse: costs no disk
    read = read_metadata_json(step_dir)
    assert read.data is None and "byte limit" in (read.warning or "")


def test_read_latest_honoured(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 300)
    update_latest(tmp_path, 300)
    assert read_latest(tmp_path) == files.LatestLink(step=300, target="step_300")
    set_latest(tmp_path, "./step_300")
    assert read_latest(tmp_path).step == 300


def test_read_latest_missing(tmp_path: Path) -> None:
    assert read_latest(tmp_path) == files.LatestLink(step=None)


@pytest.mark.parametrize(
    "target",
    ["/etc", "..", "latest", "step_999", "../step_300", "step_300/..", "step_0300", "/etc/passwd"],
)
def test_read_latest_hostile_targets_are_ignored(tmp_path: Path, target: str) -> None:
    make_checkpoint(tmp_path, 300)
    set_latest(tmp_path, target)
    latest = read_latest(tmp_path)
    assert latest.step is None
    assert latest.warning and "ignored" in latest.warning


def test_read_latest_pointing_at_a_step_symlink_is_ignored(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "step_5")
    set_latest(root, "step_5")
    assert read_latest(root).step is None


def test_latest_that_is_a_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "latest").mkdir()
    latest = read_latest(tmp_path)
    assert latest.step is None and "not a symlink" in (latest.warning or "")


def test_update_latest_replaces_atomically(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 1)
    make_checkpoint(tmp_path, 2)
    update_latest(tmp_path, 1)
    update_latest(tmp_path, 2)
    assert os.readlink(tmp_path / "latest") == "step_2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1", "step_2"]


def test_list_step_dirs_skips_symlinks_files_and_odd_names(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 2)
    (tmp_path / "step_7").write_text("a file")
    (tmp_path / "step_010").mkdir()
    os.symlink(tmp_path / "step_10", tmp_path / "step_11")
    assert [s for s, _ in layout.list_step_dirs(tmp_path)] == [2, 10]
