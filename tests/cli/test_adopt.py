"""Adopting a root written by upstream KempnerForge: no policy, no deletion; ``kf-ckpt mark``.

The root is written here the way upstream's CheckpointManager writes it (not by our writer): DCP
shards and ``.metadata``, ``train_state.pt``, a ``metadata.json`` with only ``step`` and
``tokens_seen``, and a relative ``latest`` symlink. Upstream ran with a power2 window 0..8,
interval 4 and keep_last_n 2, so steps 0, 1, 2, 4, 8 (milestones), 16 and 20 are on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.collect import hold_lock
from kempnerforge.checkpoint.store.layout import LOCK_NAME, POLICY_NAME
from kempnerforge.checkpoint.store.policy import likely_milestones
from tests._cli import run_installed
from tests.checkpoint._trees import dcp_manifest, snapshot

UPSTREAM_STEPS = [0, 1, 2, 4, 8, 16, 20]
MILESTONES = [0, 1, 2, 4, 8]
JOB = """\
[model]
dim = 64

[checkpoint]
dir = "ckpt"
interval = 4
keep_last_n = 2

[checkpoint.dyn_ckpt_window]
start = 0
stop = 8
"""


def write_upstream_checkpoint(root: Path, step: int) -> Path:
    """One checkpoint as upstream KempnerForge lays it out (DCP tree + its two side files)."""
    step_dir = root / f"step_{step}"
    step_dir.mkdir(parents=True)
    (step_dir / "__0_0.distcp").write_bytes(os.urandom(2048))
    (step_dir / "train_state.pt").write_bytes(b"PK\x03\x04upstream-train-state")
    (step_dir / "metadata.json").write_text(json.dumps({"step": step, "tokens_seen": step * 4096}))
    # DCP writes it last; it names the shard (a manifest must, or the checkpoint is corrupt).
    (step_dir / ".metadata").write_bytes(dcp_manifest({"__0_0.distcp": 2048}))
    return step_dir


def write_upstream_root(root: Path, steps: list[int]) -> Path:
    for step in steps:
        write_upstream_checkpoint(root, step)
    os.symlink(f"step_{steps[-1]}", root / "latest")
    return root


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    (tmp_path / "job.toml").write_text(JOB)
    return write_upstream_root(tmp_path / "ckpt", UPSTREAM_STEPS)


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in root.glob("step_*"))


def test_gc_without_a_policy_exits_2_and_deletes_nothing(run_cli, upstream: Path) -> None:
    before = snapshot(upstream)
    for args in (["gc", "ckpt"], ["gc", "ckpt", "--dry-run"], ["gc", "ckpt", "--json"]):
        result = run_cli(*args)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr.startswith("kf-ckpt: error: no retention policy for ckpt: ")
        assert "-c JOB.toml" in result.stderr and "--keep-last-n N" in result.stderr
        assert "'kf-ckpt mark ckpt -c JOB.toml'" in result.stderr
    assert snapshot(upstream) == before


def test_ls_without_a_policy_shows_no_deletion(run_cli, upstream: Path) -> None:
    result = run_cli("ls", "ckpt")
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()[2:9]]
    assert [int(r[0]) for r in rows] == UPSTREAM_STEPS
    assert all(
        line.endswith("keep  no retention policy") for line in result.stdout.splitlines()[2:9]
    )
    assert result.stdout.endswith("gc would delete nothing (no retention policy)\n")
    doc = json.loads(run_cli("ls", "ckpt", "--json").stdout)
    assert doc["config"]["has_policy"] is False and doc["config"]["source"] == "defaults"
    assert {c["gc_reason"] for c in doc["checkpoints"]} == {"no_policy"}
    assert doc["gc_delete_count"] == 0
    # A keep_last_n given explicitly is a policy.
    given = json.loads(run_cli("ls", "ckpt", "--set", "keep_last_n=2", "--json").stdout)
    assert given["config"]["has_policy"] is True and given["gc_delete_count"] == 5


def test_gc_with_keep_last_n_warns_about_a_power2_run_before_deleting(
    run_cli, upstream: Path
) -> None:
    warning = (
        "kf-ckpt: warning: steps 0, 1, 2, 4, 8, 16 look like the milestones of a dynamic "
        "checkpoint window, but the config has no window and gc deletes them; if they are, pass "
        "the run's job file with -c JOB.toml, or record it with 'kf-ckpt mark ckpt -c JOB.toml'\n"
    )
    dry = run_cli("gc", "ckpt", "--keep-last-n", "1", "--dry-run")
    assert dry.exit_code == 0 and dry.stderr == warning
    assert _steps(upstream) == UPSTREAM_STEPS
    as_json = run_cli("gc", "ckpt", "--keep-last-n", "1", "--dry-run", "--json")
    doc = json.loads(as_json.stdout)
    assert doc["likely_milestones"] == [0, 1, 2, 4, 8, 16]
    assert doc["warnings"][0] == warning.removeprefix("kf-ckpt: warning: ").rstrip("\n")
    done = run_cli("gc", "ckpt", "--keep-last-n", "1")
    assert done.exit_code == 0 and done.stderr == warning
    assert _steps(upstream) == [20]


def test_likely_milestones_needs_a_power2_run_of_four() -> None:
    assert likely_milestones([100, 101, 102, 104, 108, 200]) == (100, 101, 102, 104, 108)
    assert likely_milestones([0, 1, 2]) == ()
    assert likely_milestones([1000, 2000, 3000, 4000]) == ()


def test_mark_then_gc_without_config_keeps_the_milestones(run_cli, upstream: Path) -> None:
    result = run_cli("mark", "ckpt", "-c", "job.toml")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "  step  milestone\n"
        "------  -----------\n"
        "     0  marked\n"
        "     1  marked\n"
        "     2  marked\n"
        "     4  marked\n"
        "     8  marked\n"
        "\n"
        "marked 5 milestones of window 0..8 power2; 0 already marked\n"
        f"recorded the policy (keep_last_n 2, window 0..8 power2) in ckpt/{POLICY_NAME}; "
        "'kf-ckpt gc ckpt' now uses it\n"
    )
    meta = json.loads((upstream / "step_4" / "metadata.json").read_text())
    assert meta == {"step": 4, "tokens_seen": 4 * 4096, "dynamic_milestone": True}
    assert "dynamic_milestone" not in json.loads(
        (upstream / "step_16" / "metadata.json").read_text()
    )
    # Upstream keeps training: two more saves, then cron runs gc without -c.
    write_upstream_checkpoint(upstream, 24)
    write_upstream_checkpoint(upstream, 28)
    os.unlink(upstream / "latest")
    os.symlink("step_28", upstream / "latest")
    gc = run_cli("gc", "ckpt", "--json")
    assert gc.exit_code == 0, gc.stderr
    doc = json.loads(gc.stdout)
    assert doc["config"]["source"] == "policy" and doc["config"]["has_policy"] is True
    assert doc["config"]["path"] == f"ckpt/{POLICY_NAME}"
    assert doc["deleted"] == [16, 20]  # keep_last_n 2 of the job file: 24 and 28 stay
    assert _steps(upstream) == [*MILESTONES, 24, 28]
    # Without the policy file, the recorded flags alone still protect the milestones.
    (upstream / POLICY_NAME).unlink()
    again = run_cli("gc", "ckpt", "--keep-last-n", "0")
    assert again.exit_code == 0 and again.stderr == ""


def test_mark_is_idempotent_and_dry_run_changes_nothing(run_cli, upstream: Path) -> None:
    before = snapshot(upstream)
    dry = run_cli("mark", "ckpt", "-c", "job.toml", "--dry-run")
    assert dry.exit_code == 0 and "would mark 5 milestones" in dry.stdout
    assert dry.stdout.endswith("dry run: nothing was changed\n")
    assert snapshot(upstream) == before and not (upstream / POLICY_NAME).exists()
    assert run_cli("mark", "ckpt", "-c", "job.toml").exit_code == 0
    marked = snapshot(upstream)
    policy = (upstream / POLICY_NAME).read_bytes()
    ages = {s: os.stat(upstream / f"step_{s}").st_mtime_ns for s in MILESTONES}
    again = run_cli("mark", "ckpt", "-c", "job.toml", "--json")
    doc = json.loads(again.stdout)
    assert (doc["format"], doc["format_version"]) == ("kf-ckpt-mark", 1)
    assert (doc["marked"], doc["already_marked"]) == ([], MILESTONES)
    assert doc["policy"] == {"path": f"ckpt/{POLICY_NAME}", "changed": False}
    assert snapshot(upstream) == marked and (upstream / POLICY_NAME).read_bytes() == policy
    assert ages == {s: os.stat(upstream / f"step_{s}").st_mtime_ns for s in MILESTONES}


def test_mark_honours_the_lock(run_cli, upstream: Path, tmp_path: Path) -> None:
    before = snapshot(upstream)
    with hold_lock(upstream):
        result = run_cli("mark", "ckpt", "-c", "job.toml", "--wait-lock", "0.2")
        installed = run_installed("mark", "ckpt", "--window", "0..8", cwd=tmp_path)
    for code, stdout, stderr in [
        (result.exit_code, result.stdout, result.stderr),
        (installed.returncode, installed.stdout, installed.stderr),
    ]:
        assert (code, stdout) == (75, "")
        assert stderr.startswith(f"kf-ckpt: error: ckpt/{LOCK_NAME} is held by another process")
    assert snapshot(upstream) == before
    done = run_installed("mark", "ckpt", "--window", "0..8:power2", cwd=tmp_path)
    assert done.returncode == 0 and "marked 5 milestones of window 0..8 power2" in done.stdout
    assert not (upstream / POLICY_NAME).exists()  # a window alone records no policy


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--window", "0..8:fibonacci"], 2, "must be a registered strategy"),
        (["--window", "8"], 2, "write it as START..STOP"),
        (["--window", "9..5"], 2, "must be >= start"),
        ([], 2, "either -c JOB.toml or --window START..STOP"),
        (["-c", "job.toml", "--window", "0..8"], 2, "either -c JOB.toml or --window"),
    ],
)
def test_mark_refuses_bad_input(run_cli, upstream: Path, args, code, message) -> None:
    before = snapshot(upstream)
    result = run_cli("mark", "ckpt", *args)
    assert result.exit_code == code and message in result.stderr
    assert snapshot(upstream) == before


def test_mark_with_nothing_to_mark(run_cli, upstream: Path, tmp_path: Path) -> None:
    result = run_cli("mark", "ckpt", "--window", "100..200")
    assert result.exit_code == 0
    assert (
        result.stdout
        == "nothing to mark: window 100..200 power2 matches no checkpoint under ckpt\n"
    )
    (tmp_path / "empty").mkdir()
    empty = run_cli("mark", "empty", "-c", "job.toml")
    assert (empty.exit_code, empty.stdout) == (0, "no checkpoints under empty; nothing to mark\n")
    assert list((tmp_path / "empty").iterdir()) == []
    missing = run_cli("mark", "nowhere", "-c", "job.toml")
    assert missing.exit_code == 2 and "nowhere does not exist" in missing.stderr
    step_dir = run_cli("mark", "ckpt/step_4", "-c", "job.toml")
    assert step_dir.exit_code == 2 and "pass its root" in step_dir.stderr


def test_mark_skips_incomplete_and_unreadable_milestones(run_cli, upstream: Path) -> None:
    (upstream / "step_2" / ".metadata").unlink()
    (upstream / "step_4" / "metadata.json").write_text("{not json")
    (upstream / "step_8" / "metadata.json").unlink()
    result = run_cli("mark", "ckpt", "--window", "0..8", "--json")
    doc = json.loads(result.stdout)
    assert doc["marked"] == [0, 1, 8]
    assert [s["step"] for s in doc["skipped"]] == [2, 4]
    assert "incomplete" in doc["skipped"][0]["reason"]
    assert "corrupt metadata.json" in doc["skipped"][1]["reason"]
    assert (upstream / "step_4" / "metadata.json").read_text() == "{not json"
    assert json.loads((upstream / "step_8" / "metadata.json").read_text()) == {
        "step": 8,
        "dynamic_milestone": True,
    }


def test_mark_never_imports_torch(upstream: Path) -> None:
    code = (
        "import sys\n"
        "from kempnerforge.cli.main import cli\n"
        f"cli(['mark', {str(upstream)!r}, '--window', '0..8'], standalone_mode=False)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
