"""``kf-ckpt plan`` and the pure simulation behind it (``kempnerforge.checkpoint.store.simulate``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.checkpoint._trees import make_checkpoint
from tests.cli.conftest import run_installed

JOB = """\
[checkpoint]
interval = 100
keep_last_n = 2
async_mode = "async"

[checkpoint.dyn_ckpt_window]
start = 0
stop = 256
"""

PLAN = """\
config: job.toml (interval 100, keep_last_n 2, window 0..256 power2)
run: 1000 steps, 17 saves (9 milestones), 11 left at the end
most on disk at once: 12 checkpoints (first at step 500, counting the save being written)
peak disk use: 312.0 GB (12 x 26.0 GB)

steps                               saves  kind       at end    why
--------------------------------  -------  ---------  --------  --------------------
1, 2, 4, 8, 16, 32, 64, 128, 256        9  milestone  kept      dynamic milestone
300..800 every 100                      6  interval   deleted   beyond keep_last_n=2
900                                     1  interval   kept      within keep_last_n=2
1000                                    1  interval   kept      latest
"""

NO_SAVES = """\
config: defaults (interval 1000, keep_last_n 3, no window)
run: 999 steps, 0 saves (0 milestones), 0 left at the end

the run saves no checkpoint
"""


# ---- the command ------------------------------------------------------------------------------


def test_plan_prints_saves_milestones_survivors_and_peak(run_cli, tmp_path: Path):
    (tmp_path / "job.toml").write_text(JOB)
    result = run_cli("plan", "-c", "job.toml", "--max-steps", "1000", "--ckpt-size", "26GB")
    assert (result.exit_code, result.stdout, result.stderr) == (0, PLAN, "")


def test_plan_of_a_run_too_short_to_save(run_cli):
    result = run_cli("plan", "--max-steps", "999")
    assert (result.exit_code, result.stdout, result.stderr) == (0, NO_SAVES, "")


def test_plan_json_summarises_the_saves_as_runs(run_cli, tmp_path: Path):
    (tmp_path / "job.toml").write_text(JOB)
    result = run_cli(
        "plan", "-c", "job.toml", "--max-steps", "1000", "--ckpt-size", "512MiB", "--json"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["format"] == "kf-ckpt-plan" and doc["format_version"] == 2
    assert doc["config"]["source"] == "file" and doc["config"]["path"] == "job.toml"
    assert doc["max_steps"] == 1000
    assert doc["save_count"] == sum(run["count"] for run in doc["runs"]) == 17
    assert doc["milestones"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert doc["survivor_count"] == 11
    assert doc["runs"][1] == {
        "first": 300,
        "last": 800,
        "count": 6,
        "every": 100,
        "steps": None,
        "milestone": False,
        "pinned": False,
        "survives": False,
        "reason": "beyond_keep_last_n",
    }
    assert doc["runs"][0]["steps"] == doc["milestones"]
    assert (doc["max_on_disk"], doc["max_on_disk_step"]) == (12, 500)
    assert doc["ckpt_size_bytes"] == 512 * 2**20
    assert doc["peak_disk_bytes"] == 12 * 512 * 2**20


def test_set_overrides_the_job_file_and_recorded_configs_are_found(run_cli, tmp_path: Path):
    (tmp_path / "job.toml").write_text(JOB)
    doc = json.loads(
        run_cli(
            "plan", "-c", "job.toml", "--set", "keep_last_n=0", "--max-steps", "1000", "--json"
        ).stdout
    )
    assert doc["survivor_count"] == doc["save_count"] == 17
    # Without --config: the config recorded in the newest checkpoint under checkpoint.dir.
    make_checkpoint(tmp_path / "checkpoints", 10, config={"interval": 10, "keep_last_n": 1})
    doc = json.loads(run_cli("plan", "--max-steps", "50", "--json").stdout)
    assert doc["config"]["source"] == "recorded"
    assert [(r["first"], r["last"], r["every"]) for r in doc["runs"]] == [
        (10, 40, 10),
        (50, 50, 10),
    ]
    assert doc["survivor_count"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Missing option '--max-steps'"),
        (["--max-steps", "0"], "Invalid value for '--max-steps': 0 is not in the range x>=1."),
        (
            ["--max-steps", "10", "--ckpt-size", "12XB"],
            "Invalid value for '--ckpt-size': '12XB' is not a size like 5GB, 512MiB or 1024",
        ),
        (
            ["--max-steps", "10", "--set", "checkpoint.dyn_ckpt_window.start=600"],
            "kf-ckpt: error: checkpoint.dyn_ckpt_window.stop must be >= start (600), got 512 in "
            "overrides",
        ),
        (
            ["--max-steps", "10", "--set", "checkpoint.intervall=5"],
            "kf-ckpt: error: unknown key checkpoint.intervall in override",
        ),
    ],
)
def test_bad_options_exit_2_naming_them(run_cli, args: list[str], message: str):
    result = run_cli("plan", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_installed_script_plans(tmp_path: Path):
    (tmp_path / "job.toml").write_text(JOB)
    done = run_installed(
        "plan", "-c", "job.toml", "--max-steps", "1000", "--ckpt-size", "26GB", cwd=tmp_path
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, PLAN, "")
