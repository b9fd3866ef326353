"""``kf-ckpt gc``: exact output, --dry-run, --keep-last-n, --json, and the exit codes 0/1/2/75."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.collect import hold_lock
from kempnerforge.checkpoint.store.layout import CACHE_NAME, LOCK_NAME, TRASH_NAME, check_complete
from tests.checkpoint._trees import snapshot
from tests.cli.conftest import run_installed
from tests.cli.test_ls import SKIPPED_WARNINGS

DRY_RUN = """\
  step    size  action        why
------  ------  ------------  -----------------------------------
     2  1.5 MB  keep          dynamic milestone
   100  3.0 MB  would delete  beyond keep_last_n=2
   200  3.0 MB  would delete  beyond keep_last_n=2
   300  1.2 MB  would delete  abandoned incomplete save
   400  3.0 MB  keep          within keep_last_n=2
   500  3.0 MB  keep          latest
   600  1.2 MB  keep          in flight: a save may be writing it

dry run: would delete 3 of 7 checkpoints, freeing 7.2 MB; nothing was deleted
"""

GC = """\
  step    size  action    why
------  ------  --------  -----------------------------------
     2  1.5 MB  keep      dynamic milestone
   100  3.0 MB  deleted   beyond keep_last_n=2
   200  3.0 MB  deleted   beyond keep_last_n=2
   300  1.2 MB  deleted   abandoned incomplete save
   400  3.0 MB  keep      within keep_last_n=2
   500  3.0 MB  keep      latest
   600  1.2 MB  keep      in flight: a save may be writing it

deleted 3 of 7 checkpoints, freed 7.2 MB
"""

GC_FAILED = """\
  step    size  action    why
------  ------  --------  -----------------------------------------------------------------------------------
     2  1.5 MB  keep      dynamic milestone
   100  3.0 MB  FAILED    beyond keep_last_n=2; cannot move it: Operation not permitted (step_100); untouched
   200  3.0 MB  deleted   beyond keep_last_n=2
   300  1.2 MB  deleted   abandoned incomplete save
   400  3.0 MB  keep      within keep_last_n=2
   500  3.0 MB  keep      latest
   600  1.2 MB  keep      in flight: a save may be writing it

deleted 2 of 7 checkpoints, freed 4.2 MB; 1 failed
"""

GC_AGAIN = """\
  step    size  action    why
------  ------  --------  -----------------------------------
     2  1.5 MB  keep      dynamic milestone
   400  3.0 MB  keep      within keep_last_n=2
   500  3.0 MB  keep      latest
   600  1.2 MB  keep      in flight: a save may be writing it

nothing to delete; kept 4 checkpoints
"""

KEPT = ["latest", "notes.txt", "step_2", "step_400", "step_500", "step_600", "step_best"]


def _names(root: Path) -> list[str]:
    """The entries of ``root`` other than the toolkit's lock and scan cache."""
    return sorted(p.name for p in root.iterdir() if p.name not in (LOCK_NAME, CACHE_NAME))


def test_dry_run_prints_the_plan_and_deletes_nothing(run_cli, fixed_tree: Path):
    before = snapshot(fixed_tree)
    result = run_cli("gc", str(fixed_tree), "--dry-run")
    assert (result.exit_code, result.stdout, result.stderr) == (0, DRY_RUN, SKIPPED_WARNINGS)
    assert snapshot(fixed_tree) == before
    assert not (fixed_tree / LOCK_NAME).exists()  # a dry run does not take the lock


def test_gc_deletes_what_retention_does_not_keep_and_says_why(run_cli, fixed_tree: Path):
    kept_before = {name: files for name, files in snapshot(fixed_tree).items() if name in KEPT}
    result = run_cli("gc", str(fixed_tree))
    assert (result.exit_code, result.stdout, result.stderr) == (0, GC, SKIPPED_WARNINGS)
    assert _names(fixed_tree) == KEPT
    assert snapshot(fixed_tree) == kept_before  # what is kept is untouched, file by file
    again = run_cli("gc", str(fixed_tree))
    assert (again.exit_code, again.stdout) == (0, GC_AGAIN)


def test_keep_last_n_wins_over_the_config_and_set(run_cli, fixed_tree: Path):
    result = run_cli(
        "gc", str(fixed_tree), "--set", "checkpoint.keep_last_n=5", "--keep-last-n", "1", "--json"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["config"]["checkpoint"]["keep_last_n"] == 1
    assert doc["deleted"] == [100, 200, 300, 400]
    assert _names(fixed_tree) == [n for n in KEPT if n != "step_400"]


def test_gc_json_reports_every_decision_and_outcome(run_cli, fixed_tree: Path):
    result = run_cli("gc", str(fixed_tree), "--json")
    assert result.exit_code == 0
    assert result.stderr == SKIPPED_WARNINGS
    doc = json.loads(result.stdout)
    assert doc["format"] == "kf-ckpt-gc" and doc["format_version"] == 1
    assert doc["root"] == str(fixed_tree) and doc["dry_run"] is False
    assert doc["config"]["source"] == "recorded"
    outcomes = [(d["step"], d["action"], d["reason"], d["outcome"]) for d in doc["decisions"]]
    assert outcomes == [
        (2, "keep", "milestone", "kept"),
        (100, "delete", "beyond_keep_last_n", "deleted"),
        (200, "delete", "beyond_keep_last_n", "deleted"),
        (300, "delete", "abandoned_incomplete", "deleted"),
        (400, "keep", "within_keep_last_n", "kept"),
        (500, "keep", "latest", "kept"),
        (600, "keep", "in_flight", "kept"),
    ]
    assert doc["deleted"] == [100, 200, 300]
    assert doc["vanished"] == doc["skipped"] == doc["failed"] == []
    freed = sum(d["size_bytes"] for d in doc["decisions"] if d["outcome"] == "deleted")
    assert doc["bytes_freed"] == doc["bytes_to_free"] == freed
    assert 7_200_000 < freed < 7_200_000 + 64 * 1024
    assert doc["trash_cleared"] == 0
    assert [e["name"] for e in doc["skipped_entries"] if not e["toolkit_entry"]] == [
        "notes.txt",
        "step_best",
    ]
    assert doc["warnings"] == [
        "skipped notes.txt: not a step_<N> name",
        "skipped step_best: not a step_<N> name",
    ]
    dry = json.loads(run_cli("gc", str(fixed_tree), "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["deleted"] == [] and dry["bytes_to_free"] == 0


def test_a_failed_deletion_exits_1_naming_the_directory_and_the_reason(
    run_cli, fixed_tree: Path, make_immutable
):
    victim = fixed_tree / "step_100"
    make_immutable(victim)  # the OS refuses to move or delete it, even for root
    result = run_cli("gc", str(fixed_tree))
    assert result.exit_code == 1
    reason = "cannot move it: Operation not permitted (step_100); untouched"
    assert result.stdout == GC_FAILED
    assert result.stderr == SKIPPED_WARNINGS + (
        f"kf-ckpt: error: could not delete 1 checkpoint under {fixed_tree}: {victim}: {reason}; "
        f"fix the cause, then run 'kf-ckpt gc {fixed_tree}' again\n"
    )
    assert check_complete(victim).complete  # whole, not half-deleted
    assert _names(fixed_tree) == sorted([*KEPT, "step_100"])
    assert not (fixed_tree / TRASH_NAME).exists()
    again = run_cli("gc", str(fixed_tree), "--json")
    assert again.exit_code == 1
    doc = json.loads(again.stdout)
    assert doc["failed"] == [{"step": 100, "path": str(victim), "reason": reason}]
    assert [d["outcome"] for d in doc["decisions"] if d["step"] == 100] == ["failed"]


def test_a_held_lock_exits_75_and_deletes_nothing(run_cli, fixed_tree: Path, tmp_path: Path):
    before = snapshot(fixed_tree)
    with hold_lock(fixed_tree):
        result = run_cli("gc", str(fixed_tree), "--wait-lock", "0.2")
        installed = run_installed("gc", "ckpt", cwd=tmp_path)
    for code, stdout, stderr, root in [
        (result.exit_code, result.stdout, result.stderr, str(fixed_tree)),
        (installed.returncode, installed.stdout, installed.stderr, "ckpt"),
    ]:
        assert (code, stdout) == (75, "")
        assert stderr.startswith(f"kf-ckpt: error: {root}/{LOCK_NAME} is held by another process")
        assert stderr.endswith("retry later, or wait for it with --wait-lock SECONDS\n")
    assert snapshot(fixed_tree) == before


def test_wait_lock_waits_until_the_holder_lets_go(run_cli, fixed_tree: Path):
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold_lock(fixed_tree):
            held.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(timeout=30)
        threading.Timer(0.3, release.set).start()
        result = run_cli("gc", str(fixed_tree), "--wait-lock", "60")
    finally:
        release.set()
        thread.join()
    assert (result.exit_code, result.stdout) == (0, GC)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--keep-last-n", "two"],
            "Invalid value for '--keep-last-n': 'two' is not a valid integer",
        ),
        (["--wait-lock", "-1"], "Invalid value for '--wait-lock': -1.0 is not in the range x>=0."),
        (["--set", "checkpoint.nope=1"], "kf-ckpt: error: unknown key checkpoint.nope in override"),
        (["--set", "keep_last_n"], "kf-ckpt: error: override 'keep_last_n' must look like"),
    ],
)
def test_usage_and_config_errors_exit_2_and_delete_nothing(
    run_cli, fixed_tree: Path, args: list[str], message: str
):
    before = snapshot(fixed_tree)
    result = run_cli("gc", str(fixed_tree), *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert snapshot(fixed_tree) == before


def test_installed_script_runs_gc_with_a_job_file(fixed_tree: Path, tmp_path: Path):
    (tmp_path / "job.toml").write_text("[checkpoint]\ndir = 'ckpt'\nkeep_last_n = 3\n")
    done = run_installed("gc", "--config", "job.toml", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["config"] == {
        "source": "file",
        "path": "job.toml",
        "checkpoint": {**doc["config"]["checkpoint"], "keep_last_n": 3},
        "has_policy": True,
    }
    # keep_last_n = 3 and no window in the job file: step_2 survives by its recorded flag.
    assert doc["deleted"] == [100, 300]
    kept = [d["step"] for d in doc["decisions"] if d["outcome"] == "kept"]
    assert kept == [2, 200, 400, 500, 600]
