"""``kf-ckpt plan`` and the pure simulation behind it (``kempnerforge.checkpoint.simulate``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kempnerforge.checkpoint.catalog import Catalog, CheckpointInfo
from kempnerforge.checkpoint.layout import LatestLink, step_dir_name
from kempnerforge.checkpoint.retention import Reason, plan_retention
from kempnerforge.checkpoint.simulate import save_steps, simulate_run
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.config.registry import registry
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


def test_plan_json_lists_every_save(run_cli, tmp_path: Path):
    (tmp_path / "job.toml").write_text(JOB)
    result = run_cli(
        "plan", "-c", "job.toml", "--max-steps", "1000", "--ckpt-size", "512MiB", "--json"
    )
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["format"] == "kf-ckpt-plan" and doc["format_version"] == 1
    assert doc["config"]["source"] == "file" and doc["config"]["path"] == "job.toml"
    assert doc["max_steps"] == 1000
    assert doc["save_count"] == len(doc["saves"]) == 17
    assert doc["milestones"] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert doc["survivors"] == [*doc["milestones"], 900, 1000]
    assert doc["saves"][9] == {
        "step": 300,
        "milestone": False,
        "survives": False,
        "reason": "beyond_keep_last_n",
    }
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
    assert doc["survivors"] == [s["step"] for s in doc["saves"]]
    # Without --config: the config recorded in the newest checkpoint under checkpoint.dir.
    make_checkpoint(tmp_path / "checkpoints", 10, config={"interval": 10, "keep_last_n": 1})
    doc = json.loads(run_cli("plan", "--max-steps", "50", "--json").stdout)
    assert doc["config"]["source"] == "recorded"
    assert [s["step"] for s in doc["saves"]] == [10, 20, 30, 40, 50]
    assert doc["survivors"] == [50]


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
            ["--max-steps", "10", "--set", "checkpoint.dyn_ckpt_window.stop=5"],
            "kf-ckpt: error: checkpoint.dyn_ckpt_window.start is required in overrides",
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


# ---- the simulation ---------------------------------------------------------------------------


def _reference(config: CheckpointConfig, max_steps: int):  # type: ignore[no-untyped-def]
    """The obvious replay: ask every step, run retention after every save."""
    root = Path(config.dir)
    kept: list[int] = []
    fates: dict[int, tuple[bool, Reason]] = {}
    peak, peak_step = 0, None
    plan = None
    for step in range(1, max_steps + 1):
        if not config.should_save(step):
            continue
        on_disk = [*kept, step]
        if len(on_disk) > peak:
            peak, peak_step = len(on_disk), step
        infos = tuple(
            CheckpointInfo(
                step=s,
                path=root / step_dir_name(s),
                complete=True,
                incomplete_reason=None,
                is_latest=s == step,
                tokens_seen=None,
                dynamic_milestone=config.is_dynamic_milestone(s),
                recorded_config=None,
                size_bytes=0,
                file_count=0,
                mtime_s=0.0,
            )
            for s in on_disk
        )
        latest = LatestLink(step=step, target=step_dir_name(step))
        catalog = Catalog(root=root, checkpoints=infos, skipped=(), latest=latest, warnings=())
        plan = plan_retention(catalog, config)
        fates |= {d.step: (False, d.reason) for d in plan.to_delete}
        kept = [d.step for d in plan.to_keep]
    if plan is not None:
        fates |= {d.step: (True, d.reason) for d in plan.to_keep}
    return fates, peak, peak_step


if "every_7" not in registry.list_dyn_ckpt_strategies():

    @registry.register_dyn_ckpt_strategy("every_7")
    def _every_7(window: DynamicCheckpointWindow, step: int) -> bool:
        return (step - window.start) % 7 == 0


def _configs() -> list[tuple[CheckpointConfig, int]]:
    W = DynamicCheckpointWindow
    cases = [
        (CheckpointConfig(interval=100, keep_last_n=2), 1000),
        (CheckpointConfig(interval=100, keep_last_n=0), 1000),
        (CheckpointConfig(interval=100, keep_last_n=-1, dyn_ckpt_window=W(start=0, stop=256)), 900),
        (CheckpointConfig(interval=100, keep_last_n=1, dyn_ckpt_window=W(start=0, stop=256)), 900),
        (
            CheckpointConfig(interval=50, keep_last_n=3, dyn_ckpt_window=W(start=300, stop=700)),
            2000,
        ),
        (CheckpointConfig(interval=10, keep_last_n=2, dyn_ckpt_window=W(start=0, stop=5000)), 700),
        (CheckpointConfig(interval=1, keep_last_n=4, dyn_ckpt_window=W(start=5, stop=40)), 300),
        (
            CheckpointConfig(
                interval=9, keep_last_n=2, dyn_ckpt_window=W(start=20, stop=90, strategy="every_7")
            ),
            400,
        ),
        (CheckpointConfig(interval=100, keep_last_n=50), 9000),
    ]
    rng = random.Random(5)
    for _ in range(12):
        start = rng.randint(0, 300)
        window = W(start=start, stop=start + rng.randint(0, 400)) if rng.random() < 0.7 else None
        config = CheckpointConfig(
            interval=rng.choice([1, 3, 10, 50]),
            keep_last_n=rng.choice([-1, 0, 1, 2, 5, 30]),
            dyn_ckpt_window=window,
        )
        cases.append((config, rng.randint(0, 600)))
    return cases


@pytest.mark.parametrize(("config", "max_steps"), _configs())
def test_simulation_matches_the_obvious_replay(config: CheckpointConfig, max_steps: int):
    fates, peak, peak_step = _reference(config, max_steps)
    sim = simulate_run(config, max_steps, ckpt_size_bytes=10)
    assert list(sim.save_steps) == [s for s in range(1, max_steps + 1) if config.should_save(s)]
    assert sim.save_steps == tuple(save_steps(config, max_steps))
    assert {s.step: (s.survives, s.reason) for s in sim.saves} == fates
    assert sim.milestones == tuple(s for s in sim.save_steps if config.is_dynamic_milestone(s))
    assert (sim.max_on_disk, sim.max_on_disk_step) == (peak, peak_step)
    assert sim.peak_disk_bytes == peak * 10


@pytest.mark.parametrize("keep_last_n", [3, 0])
def test_ten_million_steps_are_simulated_without_visiting_every_step(keep_last_n: int):
    window = DynamicCheckpointWindow(start=0, stop=2**20)
    config = CheckpointConfig(interval=1000, keep_last_n=keep_last_n, dyn_ckpt_window=window)
    sim = simulate_run(config, 10**7, ckpt_size_bytes=26 * 10**9)
    milestones = tuple(2**k for k in range(21))
    interval_saves = tuple(range(1_049_000, 10**7 + 1, 1000))
    assert sim.save_steps == milestones + interval_saves
    assert sim.milestones == milestones
    if keep_last_n == 3:
        assert sim.survivors == milestones + interval_saves[-3:]
        assert sim.max_on_disk == 21 + 3 + 1
    else:
        assert sim.survivors == sim.save_steps
        assert (sim.max_on_disk, sim.max_on_disk_step) == (len(sim.saves), 10**7)
    assert sim.peak_disk_bytes == sim.max_on_disk * 26 * 10**9


def test_save_steps_rejects_a_negative_step_count():
    with pytest.raises(ValueError, match="max_steps must be a non-negative integer, got -1"):
        save_steps(CheckpointConfig(), -1)
