"""``kf-ckpt ls``: exact table, JSON document, warnings on stderr, config selection, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.checkpoint._trees import make_checkpoint, set_latest, snapshot
from tests.cli._tree import JOB_TOML, NOW_S, TOKENS_PER_STEP
from tests.cli.conftest import run_installed

LS_TABLE = """\
  step  status        size    tokens  age        marks      gc      why
------  ----------  ------  --------  ---------  ---------  ------  -----------------------------------
     2  complete    1.5 MB      4.2M  4 d ago    milestone  keep    dynamic milestone
   100  complete    3.0 MB    209.7M  2 d ago               delete  beyond keep_last_n=2
   200  complete    3.0 MB    419.4M  30 h ago              delete  beyond keep_last_n=2
   300  incomplete  1.2 MB    629.1M  20 h ago              delete  abandoned incomplete save
   400  complete    3.0 MB    838.9M  5 h ago               keep    within keep_last_n=2
   500  complete    3.0 MB      1.0B  2 h ago    latest     keep    latest
   600  in-flight   1.2 MB      1.3B  1 min ago             keep    in flight: a save may be writing it

7 checkpoints, 15.9 MB; gc would delete 3 (7.2 MB)
"""

SKIPPED_WARNINGS = """\
kf-ckpt: warning: skipped notes.txt: not a step_<N> name
kf-ckpt: warning: skipped step_best: not a step_<N> name
"""


def test_ls_prints_the_table_oldest_first_and_warnings_on_stderr(run_cli, fixed_tree: Path):
    result = run_cli("ls", str(fixed_tree))
    assert result.exit_code == 0
    assert result.stdout == LS_TABLE
    assert result.stderr == SKIPPED_WARNINGS


def test_ls_deletes_nothing(run_cli, fixed_tree: Path):
    before = snapshot(fixed_tree)
    run_cli("ls", str(fixed_tree))
    assert snapshot(fixed_tree) == before


def test_ls_json_is_one_document_with_the_same_data(run_cli, fixed_tree: Path):
    result = run_cli("ls", str(fixed_tree), "--json")
    assert result.exit_code == 0
    assert result.stderr == SKIPPED_WARNINGS
    doc = json.loads(result.stdout)
    assert doc["format"] == "kf-ckpt-ls" and doc["format_version"] == 1
    assert doc["root"] == str(fixed_tree)
    assert doc["config"]["source"] == "recorded"
    assert doc["config"]["path"] == str(fixed_tree / "step_600" / "metadata.json")
    assert doc["config"]["checkpoint"]["keep_last_n"] == 2
    assert doc["latest"] == 500
    rows = [
        (c["step"], c["status"], c["latest"], c["milestone"], c["gc_action"], c["gc_reason"])
        for c in doc["checkpoints"]
    ]
    assert rows == [
        (2, "complete", False, True, "keep", "milestone"),
        (100, "complete", False, False, "delete", "beyond_keep_last_n"),
        (200, "complete", False, False, "delete", "beyond_keep_last_n"),
        (300, "incomplete", False, False, "delete", "abandoned_incomplete"),
        (400, "complete", False, False, "keep", "within_keep_last_n"),
        (500, "complete", True, False, "keep", "latest"),
        (600, "in-flight", False, False, "keep", "in_flight"),
    ]
    first = doc["checkpoints"][0]
    assert first["path"] == str(fixed_tree / "step_2")
    assert first["tokens_seen"] == 2 * TOKENS_PER_STEP
    assert first["mtime_s"] == NOW_S - 4 * 86400
    assert first["file_count"] == 5  # two shards, .metadata, train_state.pt, metadata.json
    assert 1_500_000 < first["size_bytes"] < 1_500_000 + 64 * 1024
    assert doc["checkpoints"][3]["incomplete_reason"] == "no DCP .metadata"
    assert doc["count"] == 7
    assert doc["size_bytes"] == sum(c["size_bytes"] for c in doc["checkpoints"])
    assert doc["gc_delete_count"] == 3
    assert doc["gc_bytes_freed"] == sum(
        c["size_bytes"] for c in doc["checkpoints"] if c["gc_action"] == "delete"
    )
    assert doc["warnings"] == [
        line.removeprefix("kf-ckpt: warning: ") for line in SKIPPED_WARNINGS.splitlines()
    ]
    skipped = {s["name"]: s["toolkit_entry"] for s in doc["skipped"]}
    assert skipped == {"latest": True, "notes.txt": False, "step_best": False}


def test_a_job_file_wins_over_the_recorded_config_and_set_wins_over_both(
    run_cli, fixed_tree: Path, tmp_path: Path
):
    (tmp_path / "job.toml").write_text(JOB_TOML)  # keep_last_n = 1
    doc = json.loads(run_cli("ls", str(fixed_tree), "-c", "job.toml", "--json").stdout)
    assert doc["config"]["source"] == "file"
    deleted = [c["step"] for c in doc["checkpoints"] if c["gc_action"] == "delete"]
    assert deleted == [100, 200, 300, 400]
    doc = json.loads(
        run_cli("ls", "-c", "job.toml", "--set", "checkpoint.keep_last_n=0", "--json").stdout
    )
    assert doc["root"] == "ckpt"  # DIR defaults to checkpoint.dir of the job file
    assert doc["config"]["checkpoint"]["keep_last_n"] == 0
    assert doc["gc_delete_count"] == 0  # keep_last_n <= 0 keeps everything


def test_without_dir_the_defaults_dir_and_its_recorded_config_are_used(run_cli, tmp_path: Path):
    root = tmp_path / "checkpoints"  # CheckpointConfig().dir
    make_checkpoint(root, 100, config={"keep_last_n": 1})
    make_checkpoint(root, 200, config={"keep_last_n": 1})
    doc = json.loads(run_cli("ls", "--json").stdout)
    assert doc["root"] == "checkpoints"
    assert doc["config"]["source"] == "recorded"
    assert [(c["step"], c["gc_action"]) for c in doc["checkpoints"]] == [
        (100, "delete"),
        (200, "keep"),
    ]


def test_hostile_entries_and_corrupt_metadata_are_warnings_not_crashes(run_cli, tmp_path: Path):
    root = tmp_path / "ckpt"
    make_checkpoint(root, 100)
    make_checkpoint(root, 200, metadata="{not json")
    set_latest(root, "/etc")
    (root / "step_300").symlink_to("/etc")
    result = run_cli("ls", "ckpt")
    assert result.exit_code == 0
    assert [line.split()[:2] for line in result.stdout.splitlines()[2:4]] == [
        ["100", "complete"],
        ["200", "complete"],
    ]
    assert result.stderr == (
        "kf-ckpt: warning: skipped step_300: a symlink named like a checkpoint; never followed\n"
        "kf-ckpt: warning: latest -> /etc is not a step_<N> dir inside the root; ignored\n"
        "kf-ckpt: warning: step_200: corrupt metadata.json: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)\n"
    )


def test_an_empty_root_lists_nothing(run_cli, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = run_cli("ls", "empty")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "no checkpoints under empty\n",
        "",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["missing"],
            "kf-ckpt: error: checkpoint root missing does not exist; "
            "check checkpoint.dir or the DIR argument\n",
        ),
        (
            ["ckpt", "--set", "checkpoint.keep_lats_n=2"],
            "kf-ckpt: error: unknown key checkpoint.keep_lats_n in override "
            "'checkpoint.keep_lats_n=2'; valid keys: ",
        ),
        (
            ["ckpt", "--set", "checkpoint.interval=0"],
            "kf-ckpt: error: checkpoint.interval must be positive, got 0 in overrides\n",
        ),
        (
            ["ckpt", "--set", "checkpoint.keep_last_n=many"],
            "kf-ckpt: error: override checkpoint.keep_last_n='many': expected an integer\n",
        ),
        (
            ["ckpt", "-c", "nope.toml"],
            "kf-ckpt: error: config file nope.toml does not exist; pass an existing job TOML\n",
        ),
    ],
)
def test_bad_roots_keys_and_values_exit_2_naming_them(
    run_cli, fixed_tree: Path, args: list[str], message: str
):
    result = run_cli("ls", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message)


def test_a_corrupt_recorded_config_is_an_error_that_says_to_pass_config(run_cli, tmp_path: Path):
    make_checkpoint(tmp_path / "ckpt", 100, config={"keep_last_n": "three"})
    result = run_cli("ls", "ckpt")
    assert result.exit_code == 2
    assert "checkpoint.keep_last_n" in result.stderr
    assert result.stderr.rstrip().endswith("pass the run's job file with --config")


def test_installed_script_prints_the_same_table(fixed_tree: Path, tmp_path: Path):
    done = run_installed("ls", "ckpt", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, LS_TABLE, SKIPPED_WARNINGS)


@pytest.mark.parametrize("args", [["ls"], ["ls", "--json"], ["gc", "--dry-run"], ["gc"]])
def test_ls_and_gc_never_import_torch(fixed_tree: Path, args: list[str]):
    code = (
        "import sys\n"
        "from kempnerforge.cli.main import cli\n"
        f"cli([*{args!r}, {str(fixed_tree)!r}], standalone_mode=False)\n"
        "assert 'kempnerforge.cli.main' in sys.modules\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False"
