"""kempnerforge.checkpoint.store.simulate: the run simulation behind `kf-ckpt plan`.

Checked against the obvious replay (ask every step, run retention after every save) on many
configs, and on a run too long to replay step by step.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.files import LatestLink
from kempnerforge.checkpoint.store.layout import step_dir_name
from kempnerforge.checkpoint.store.pins import Pin
from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo
from kempnerforge.checkpoint.store.retention import Reason, plan_retention
from kempnerforge.checkpoint.store.simulate import simulate_run
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.config.registry import registry


def _reference(config: CheckpointConfig, max_steps: int, pins=frozenset()):  # type: ignore[no-untyped-def]
    """The obvious replay: ask every step, run retention after every save (``pins`` pinned as
    soon as they are saved)."""
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
                pin=Pin(note="forecast") if s in pins else None,
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
    saves = list(sim.iter_saves())
    steps = [s.step for s in saves]
    assert steps == [s for s in range(1, max_steps + 1) if config.should_save(s)]
    assert sim.save_count == len(saves)
    assert {s.step: (s.survives, s.reason) for s in saves} == fates
    assert sim.milestones == tuple(s for s in steps if config.is_dynamic_milestone(s))
    assert [s.milestone for s in saves] == [config.is_dynamic_milestone(s) for s in steps]
    assert list(sim.iter_survivors()) == [s for s in steps if fates[s][0]]
    assert sim.survivor_count == sum(1 for s in steps if fates[s][0])
    assert (sim.max_on_disk, sim.max_on_disk_step) == (peak, peak_step)
    assert sim.peak_disk_bytes == peak * 10


@pytest.mark.parametrize("keep_last_n", [3, 0])
def test_ten_million_steps_are_simulated_without_visiting_every_step(keep_last_n: int):
    window = DynamicCheckpointWindow(start=0, stop=2**20)
    config = CheckpointConfig(interval=1000, keep_last_n=keep_last_n, dyn_ckpt_window=window)
    sim = simulate_run(config, 10**7, ckpt_size_bytes=26 * 10**9)
    milestones = tuple(2**k for k in range(21))
    interval_saves = tuple(range(1_049_000, 10**7 + 1, 1000))
    assert tuple(s.step for s in sim.iter_saves()) == milestones + interval_saves
    assert sim.milestones == milestones
    if keep_last_n == 3:
        assert tuple(sim.iter_survivors()) == milestones + interval_saves[-3:]
        assert (sim.max_on_disk, sim.max_on_disk_step) == (21 + 3 + 1, 1_052_000)
    else:
        assert tuple(sim.iter_survivors()) == milestones + interval_saves
        assert (sim.max_on_disk, sim.max_on_disk_step) == (sim.save_count, 10**7)
    assert sim.peak_disk_bytes == sim.max_on_disk * 26 * 10**9


def test_a_trillion_steps_are_summarised_in_a_few_runs():
    window = DynamicCheckpointWindow(start=0, stop=2**20)
    config = CheckpointConfig(interval=1, keep_last_n=3, dyn_ckpt_window=window)
    sim = simulate_run(config, 10**12)
    assert sim.save_count == 21 + (10**12 - 2**20)
    assert sim.survivor_count == 24 and sim.max_on_disk == 25
    assert [(r.first, r.last, r.count, r.reason) for r in sim.runs] == [
        (1, 2**20, 21, Reason.milestone),
        (2**20 + 1, 10**12 - 3, 10**12 - 2**20 - 3, Reason.beyond_keep_last_n),
        (10**12 - 2, 10**12 - 1, 2, Reason.within_keep_last_n),
        (10**12, 10**12, 1, Reason.latest),
    ]


@pytest.mark.parametrize(
    ("config", "max_steps", "pins"),
    [
        (CheckpointConfig(interval=10, keep_last_n=3), 400, {70, 100, 400}),
        (CheckpointConfig(interval=10, keep_last_n=1), 400, {10, 20, 30}),
        (CheckpointConfig(interval=10, keep_last_n=0), 100, {50}),
        (
            CheckpointConfig(
                interval=10, keep_last_n=3, dyn_ckpt_window=DynamicCheckpointWindow(0, 64)
            ),
            2000,
            {16, 70, 500, 510, 2000},
        ),
    ],
)
def test_pins_match_the_obvious_replay(config: CheckpointConfig, max_steps: int, pins: set[int]):
    fates, peak, peak_step = _reference(config, max_steps, frozenset(pins))
    sim = simulate_run(config, max_steps, pins=pins)
    saves = list(sim.iter_saves())
    assert {s.step: (s.survives, s.reason) for s in saves} == fates
    assert (sim.max_on_disk, sim.max_on_disk_step) == (peak, peak_step)
    assert sim.pins == tuple(sorted(pins)) == tuple(s.step for s in saves if s.pinned)


def test_a_negative_step_count_is_refused():
    with pytest.raises(ValueError, match="max_steps must be a non-negative integer, got -1"):
        simulate_run(CheckpointConfig(), -1)
