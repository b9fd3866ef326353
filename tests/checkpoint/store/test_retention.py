"""Retention rules as tables: pure plans from hand-made catalogs (no filesystem involved)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.files import LatestLink
from kempnerforge.checkpoint.store.pins import Pin
from kempnerforge.checkpoint.store.records import Catalog, CheckpointInfo, SkippedEntry
from kempnerforge.checkpoint.store.retention import (
    IN_FLIGHT_GRACE_S,
    Action,
    Decision,
    MilestoneSource,
    Reason,
    RetentionPlan,
    plan_retention,
)
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from tests.checkpoint._trees import decision_for

ROOT = Path("/nonexistent/ckpt")  # plans never touch the filesystem
NOW_S = 2_000_000_000.0  # the scan time of the catalogs that record one
K, D = Action.keep, Action.delete


def info(
    step: int,
    *,
    complete: bool = True,
    milestone: bool = False,
    scan_error: str | None = None,
    latest: bool = False,
    size_bytes: int = 100,
    mtime_s: float | None = None,
) -> CheckpointInfo:
    return CheckpointInfo(
        step=step,
        path=ROOT / f"step_{step}",
        complete=complete and scan_error is None,
        incomplete_reason=None
        if complete and scan_error is None
        else (scan_error or "no .metadata"),
        is_latest=latest,
        tokens_seen=step * 10,
        dynamic_milestone=milestone,
        recorded_config=None,
        size_bytes=size_bytes,
        file_count=3,
        mtime_s=1.0e9 + step if mtime_s is None else mtime_s,
        scan_error=scan_error,
    )


def catalog(
    *infos: CheckpointInfo,
    skipped: tuple[SkippedEntry, ...] = (),
    scanned_at_s: float | None = None,
) -> Catalog:
    latest = next((i.step for i in infos if i.is_latest), None)
    return Catalog(
        root=ROOT,
        checkpoints=tuple(sorted(infos, key=lambda i: i.step)),
        skipped=skipped,
        latest=LatestLink(step=latest, target=None if latest is None else f"step_{latest}"),
        scanned_at_s=scanned_at_s,
    )


@dataclass(frozen=True)
class Case:
    id: str
    checkpoints: tuple[CheckpointInfo, ...]
    expected: dict[int, tuple[Action, Reason]]
    keep_last_n: int = 3
    window: tuple[int, int] | None = None
    skipped: tuple[SkippedEntry, ...] = field(default=())


def _c(steps: range | list[int], **kw: object) -> list[CheckpointInfo]:
    return [info(s, **kw) for s in steps]  # type: ignore[arg-type]


CASES = [
    Case(
        "keep3-latest-newest",
        (*_c([100, 200, 300, 400]), info(500, latest=True)),
        {
            100: (D, Reason.beyond_keep_last_n),
            200: (D, Reason.beyond_keep_last_n),
            300: (K, Reason.within_keep_last_n),
            400: (K, Reason.within_keep_last_n),
            500: (K, Reason.latest),
        },
    ),
    Case(
        "keep1",
        (*_c([10, 20]), info(30, latest=True)),
        {
            10: (D, Reason.beyond_keep_last_n),
            20: (D, Reason.beyond_keep_last_n),
            30: (K, Reason.latest),
        },
        keep_last_n=1,
    ),
    Case(
        "keep0-keeps-all-even-abandoned",
        (info(10, complete=False), *_c([20, 30]), info(40, latest=True)),
        {
            10: (K, Reason.keep_all),
            20: (K, Reason.keep_all),
            30: (K, Reason.keep_all),
            40: (K, Reason.latest),
        },
        keep_last_n=0,
    ),
    Case(
        "keep-negative-keeps-all-and-newest-complete",
        tuple(_c([1, 2, 3])),
        {1: (K, Reason.keep_all), 2: (K, Reason.keep_all), 3: (K, Reason.newest_complete)},
        keep_last_n=-1,
    ),
    Case(
        "window-start-0-milestones-use-no-slots",
        # power2 window [0, 100]: 0, 1, 2, 4, 8, 16, 32, 64 are milestones.
        (*_c([0, 1, 2, 4, 8, 16, 32, 64]), *_c([200, 300, 400]), info(500, latest=True)),
        {
            **{s: (K, Reason.milestone) for s in (0, 1, 2, 4, 8, 16, 32, 64)},
            200: (D, Reason.beyond_keep_last_n),
            300: (K, Reason.within_keep_last_n),
            400: (K, Reason.within_keep_last_n),
            500: (K, Reason.latest),
        },
        window=(0, 100),
    ),
    Case(
        "window-start-gt-0",
        # power2 window [100, 200]: 100, 101, 102, 104, 108, 116, 132, 164 are milestones; 150
        # lies inside the window but is not one of its saves.
        (*_c([50, 100, 101, 104, 150, 164, 300, 400]), info(500, latest=True)),
        {
            50: (D, Reason.beyond_keep_last_n),
            100: (K, Reason.milestone),
            101: (K, Reason.milestone),
            104: (K, Reason.milestone),
            150: (D, Reason.beyond_keep_last_n),
            164: (K, Reason.milestone),
            300: (K, Reason.within_keep_last_n),
            400: (K, Reason.within_keep_last_n),
            500: (K, Reason.latest),
        },
        window=(100, 200),
    ),
    Case(
        "in-flight-newer-than-newest-complete",
        (*_c([100, 200]), info(300, latest=True), info(400, complete=False)),
        {
            100: (D, Reason.beyond_keep_last_n),
            200: (K, Reason.within_keep_last_n),
            300: (K, Reason.latest),
            400: (K, Reason.in_flight),
        },
        keep_last_n=2,
    ),
    Case(
        "abandoned-incomplete-older-than-newest-complete",
        (info(100), info(150, complete=False), info(200), info(300, latest=True)),
        {
            100: (K, Reason.within_keep_last_n),
            150: (D, Reason.abandoned_incomplete),
            200: (K, Reason.within_keep_last_n),
            300: (K, Reason.latest),
        },
    ),
    Case(
        "no-complete-checkpoint-everything-in-flight",
        (info(100, complete=False), info(200, complete=False)),
        {100: (K, Reason.in_flight), 200: (K, Reason.in_flight)},
        keep_last_n=1,
    ),
    Case(
        "latest-on-old-step-after-rollback",
        (*_c([100]), info(200, latest=True), *_c([300, 400, 500]), info(600, complete=False)),
        {
            100: (D, Reason.beyond_keep_last_n),
            200: (K, Reason.latest),
            300: (D, Reason.beyond_keep_last_n),
            400: (K, Reason.within_keep_last_n),
            500: (K, Reason.within_keep_last_n),
            600: (K, Reason.in_flight),
        },
        keep_last_n=2,
    ),
    Case(
        "recorded-milestone-flag-without-window",
        (info(10, milestone=True), info(20, milestone=True), *_c([30, 40]), info(50, latest=True)),
        {
            10: (K, Reason.milestone),
            20: (K, Reason.milestone),
            30: (D, Reason.beyond_keep_last_n),
            40: (D, Reason.beyond_keep_last_n),
            50: (K, Reason.latest),
        },
        keep_last_n=1,
    ),
    Case(
        "newest-complete-is-milestone-keep1-keeps-newest-non-milestone",
        (*_c([10, 20]), info(30, milestone=True)),
        {
            10: (D, Reason.beyond_keep_last_n),
            20: (K, Reason.within_keep_last_n),
            30: (K, Reason.milestone),
        },
        keep_last_n=1,
    ),
    Case(
        "no-latest-link-newest-complete-kept-by-window",
        tuple(_c([1, 2, 3, 4])),
        {
            1: (D, Reason.beyond_keep_last_n),
            2: (D, Reason.beyond_keep_last_n),
            3: (K, Reason.within_keep_last_n),
            4: (K, Reason.within_keep_last_n),
        },
        keep_last_n=2,
    ),
    Case(
        "incomplete-milestone-is-still-a-milestone",
        (info(0, complete=False, milestone=True), *_c([100, 200])),
        {
            0: (K, Reason.milestone),
            100: (D, Reason.beyond_keep_last_n),
            200: (K, Reason.within_keep_last_n),
        },
        keep_last_n=1,
    ),
    Case(
        "unreadable-old-dir-kept-until-judged",
        (info(100, scan_error="cannot read step_100/"), *_c([200, 300])),
        {
            100: (K, Reason.unreadable),
            200: (D, Reason.beyond_keep_last_n),
            300: (K, Reason.within_keep_last_n),
        },
        keep_last_n=1,
    ),
    Case(
        "incomplete-latest-target-kept",
        (info(100), info(200, complete=False, latest=True), info(300)),
        {
            100: (D, Reason.beyond_keep_last_n),
            200: (K, Reason.latest),
            300: (K, Reason.within_keep_last_n),
        },
        keep_last_n=1,
    ),
    Case(
        "keep-more-than-exist",
        (*_c([1, 2]), info(3, latest=True)),
        {
            1: (K, Reason.within_keep_last_n),
            2: (K, Reason.within_keep_last_n),
            3: (K, Reason.latest),
        },
        keep_last_n=10,
    ),
    Case(
        "non-numeric-dirs-are-not-in-the-plan",
        (*_c([1, 2]),),
        {1: (D, Reason.beyond_keep_last_n), 2: (K, Reason.within_keep_last_n)},
        keep_last_n=1,
        skipped=(
            SkippedEntry(name="step_best", path=ROOT / "step_best", reason="not a step_<N> name"),
            SkippedEntry(name="step_007", path=ROOT / "step_007", reason="not a step_<N> name"),
        ),
    ),
    Case("empty-root", (), {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_retention_table(case: Case) -> None:
    window = DynamicCheckpointWindow(*case.window) if case.window else None
    config = CheckpointConfig(keep_last_n=case.keep_last_n, dyn_ckpt_window=window)
    plan = plan_retention(catalog(*case.checkpoints, skipped=case.skipped), config)
    got = {d.step: (d.action, d.reason) for d in plan.decisions}
    assert got == case.expected
    assert [d.step for d in plan.decisions] == sorted(case.expected)
    assert plan.keep_last_n == case.keep_last_n
    check_facts(plan)


def check_facts(plan: RetentionPlan) -> None:
    """Every decision carries the facts its reason is worded from (``kf-ckpt`` words them)."""
    for d in plan.decisions:
        assert d.keep_last_n == plan.keep_last_n and d.pending_kind is None and d.writer is None
        assert d.complete == (d.incomplete_reason is None)
        if d.reason is Reason.within_keep_last_n:
            assert d.rank is not None and 1 <= d.rank <= plan.keep_last_n
        if d.reason is Reason.milestone:
            assert d.milestone is not None
        if d.reason is Reason.unreadable:
            assert d.scan_error is not None
        if d.reason in (Reason.abandoned_incomplete, Reason.newest_complete):
            assert d.newest_step is not None
    ranks = sorted(d.rank for d in plan.decisions if d.rank is not None)
    assert ranks == list(range(1, len(ranks) + 1))  # 1 is the newest, no gaps


@dataclass(frozen=True)
class GraceCase:
    """An incomplete step_600 below the newest complete step_1000, last written ``idle_s`` ago."""

    id: str
    idle_s: float | None
    """Seconds between its newest mtime and the scan; None: a catalog without a scan time."""
    expected: Reason
    detail: str
    """What ``kf-ckpt`` says of it (checked by ``tests/cli/test_decisions.py``)."""
    grace_s: float | None = None
    """``in_flight_grace_s`` passed to plan_retention (None: the default)."""


GRACE_CASES = [
    GraceCase("written-2-min-ago", 120.0, Reason.in_flight, "written 2 min ago; a save may still"),
    GraceCase("written-5-s-ago", 5.0, Reason.in_flight, "written 5 s ago"),
    GraceCase("exactly-at-the-grace-boundary", 3600.0, Reason.in_flight, "written 1 h ago"),
    GraceCase(
        "just-past-the-grace-boundary", 3600.5, Reason.abandoned_incomplete, "older than step 1000"
    ),
    GraceCase(
        "written-3-days-ago", 3 * 86400.0, Reason.abandoned_incomplete, "older than step 1000"
    ),
    GraceCase("mtime-after-the-scan-started", -30.0, Reason.in_flight, "written in the future"),
    GraceCase("unknown-mtime-never-judged-stale", float("nan"), Reason.in_flight, "unknown time"),
    GraceCase(
        "catalog-without-scan-time", None, Reason.abandoned_incomplete, "older than step 1000"
    ),
    GraceCase(
        "override-shorter-grace", 120.0, Reason.abandoned_incomplete, "older than", grace_s=60.0
    ),
    GraceCase(
        "override-at-its-boundary", 60.0, Reason.in_flight, "written 1 min ago", grace_s=60.0
    ),
    GraceCase(
        "override-longer-grace", 5 * 3600.0, Reason.in_flight, "written 5 h ago", grace_s=86400.0
    ),
    GraceCase("grace-zero-only-now", 0.0, Reason.in_flight, "written 0 s ago", grace_s=0.0),
    GraceCase("grace-zero-a-moment-later", 0.25, Reason.abandoned_incomplete, "older", grace_s=0.0),
]


def grace_plan(case: GraceCase) -> RetentionPlan:
    """A rollback: the run resumed from step_500 (latest) and is saving step_600, while
    step_700 .. step_1000 of the abandoned timeline are complete."""
    idle_s = 0.0 if case.idle_s is None else case.idle_s
    cat = catalog(
        info(500, latest=True),
        info(600, complete=False, mtime_s=NOW_S - idle_s),
        *_c([700, 800, 900, 1000]),
        scanned_at_s=None if case.idle_s is None else NOW_S,
    )
    kwargs = {} if case.grace_s is None else {"in_flight_grace_s": case.grace_s}
    return plan_retention(cat, CheckpointConfig(keep_last_n=2), **kwargs)


@pytest.mark.parametrize("case", GRACE_CASES, ids=[c.id for c in GRACE_CASES])
def test_in_flight_grace_table(case: GraceCase) -> None:
    plan = grace_plan(case)
    decision = decision_for(plan, 600)
    assert decision.reason is case.expected
    assert decision.action is (Action.keep if case.expected is Reason.in_flight else Action.delete)
    # The facts its detail is worded from: its state, the step it lies below, its idle time.
    assert not decision.complete and decision.incomplete_reason == "no .metadata"
    assert decision.newest_step == 1000 and decision.rank is None
    if case.idle_s is None:
        assert decision.idle_s is None
    elif case.idle_s != case.idle_s:
        assert decision.idle_s is not None and decision.idle_s != decision.idle_s  # NaN
    else:
        assert decision.idle_s == case.idle_s
    others = {d.step: d.reason for d in plan.decisions if d.step != 600}
    assert others == {
        500: Reason.latest,
        700: Reason.beyond_keep_last_n,
        800: Reason.beyond_keep_last_n,
        900: Reason.within_keep_last_n,
        1000: Reason.within_keep_last_n,
    }
    assert {d.step: d.rank for d in plan.decisions if d.rank is not None} == {1000: 1, 900: 2}


def test_grace_applies_only_to_incomplete_checkpoints_and_keeps_others_rules() -> None:
    recent = NOW_S - 10
    cat = catalog(
        info(100, mtime_s=recent),  # complete and recent: retention treats it as any complete
        info(200, complete=False, mtime_s=recent),
        info(300, complete=False, mtime_s=NOW_S - 2 * IN_FLIGHT_GRACE_S, scan_error="cannot read"),
        info(400, complete=False, mtime_s=recent, milestone=True),
        info(500),
        info(600, complete=False, mtime_s=NOW_S - 10 * IN_FLIGHT_GRACE_S),  # newer than 500
        scanned_at_s=NOW_S,
    )
    got = {d.step: d.reason for d in plan_retention(cat, CheckpointConfig(keep_last_n=1)).decisions}
    assert got == {
        100: Reason.beyond_keep_last_n,
        200: Reason.in_flight,
        300: Reason.unreadable,
        400: Reason.milestone,
        500: Reason.within_keep_last_n,
        600: Reason.in_flight,
    }
    keep_all = plan_retention(cat, CheckpointConfig(keep_last_n=0))
    assert decision_for(keep_all, 200).reason is Reason.in_flight
    newer = decision_for(keep_all, 600)  # in flight as newer than step 500, however idle
    assert newer.reason is Reason.in_flight and newer.newest_step == 500
    assert newer.idle_s == 10 * IN_FLIGHT_GRACE_S


def test_plan_totals_and_views() -> None:
    cat = catalog(info(1, size_bytes=10), info(2, size_bytes=20), info(3, size_bytes=40))
    plan = plan_retention(cat, CheckpointConfig(keep_last_n=1))
    assert [d.step for d in plan.to_delete] == [1, 2]
    assert [d.step for d in plan.to_keep] == [3]
    assert plan.bytes_freed == 30
    assert plan.root == ROOT
    assert decision_for(plan, 2).action is Action.delete
    assert 99 not in {d.step for d in plan.decisions}


def test_plan_is_pure_and_frozen() -> None:
    cat = catalog(*_c([1, 2, 3, 4]))
    config = CheckpointConfig(keep_last_n=2)
    first, second = plan_retention(cat, config), plan_retention(cat, config)
    assert first == second
    with pytest.raises(AttributeError):
        first.keep_last_n = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        first.decisions[0].action = Action.keep  # type: ignore[misc]


def test_planned_decisions_are_those_the_constructor_makes() -> None:
    # plan_retention fills the decisions' dicts directly (cheaper than the frozen __init__).
    cat = catalog(info(1), info(2, complete=False), info(3, latest=True), info(4, milestone=True))
    names = [f.name for f in dataclasses.fields(Decision)]
    for decision in plan_retention(cat, CheckpointConfig(keep_last_n=1)).decisions:
        built = Decision(**{name: getattr(decision, name) for name in names})
        assert decision == built and repr(decision) == repr(built)
        assert hash(decision) == hash(built) and sorted(vars(decision)) == sorted(names)
        with pytest.raises(dataclasses.FrozenInstanceError):
            decision.step = 9  # type: ignore[misc]


def test_a_milestone_decision_names_its_source() -> None:
    config = CheckpointConfig(dyn_ckpt_window=DynamicCheckpointWindow(start=0, stop=16))
    plan = plan_retention(catalog(info(4), info(5)), config)
    window = MilestoneSource(recorded=False, start=0, stop=16, strategy="power2")
    assert plan.decisions[0].reason is Reason.milestone and plan.decisions[0].milestone == window
    assert plan.decisions[1].milestone is None
    recorded = plan_retention(catalog(info(4, milestone=True), info(5)), CheckpointConfig())
    assert recorded.decisions[0].milestone == MilestoneSource(recorded=True)
    # Both at once: the config's window is named (it is what a reader can change).
    both = plan_retention(catalog(info(4, milestone=True), info(5)), config)
    assert both.decisions[0].milestone == window


def test_facts_are_recorded_whatever_the_reason() -> None:
    pin = dataclasses.replace(info(20), pin=Pin(note="best eval loss"))
    cat = catalog(info(10), pin, info(30), info(40, latest=True), scanned_at_s=NOW_S)
    plan = plan_retention(cat, CheckpointConfig(keep_last_n=2))
    got = {d.step: (d.reason, d.rank, d.newest_step, d.pin_note, d.idle_s) for d in plan.decisions}
    assert got == {
        10: (Reason.beyond_keep_last_n, None, 40, None, None),
        20: (Reason.pinned, None, 40, "best eval loss", None),  # pins use up no slot
        30: (Reason.within_keep_last_n, 2, 40, None, None),
        40: (Reason.latest, 1, 40, None, None),  # the latest target ranks too
    }
    unpolicied = plan_retention(cat, None)
    assert {(d.reason, d.keep_last_n, d.rank) for d in unpolicied.decisions} == {
        (Reason.no_policy, None, None)
    }


@pytest.mark.parametrize("seed", range(40))
def test_random_catalogs_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(0, 2000, 10), rng.randint(0, 30)))
    window = rng.choice([None, (0, 64), (100, 400)])
    keep_last_n = rng.choice([-1, 0, 1, 2, 3, 7])
    latest = rng.choice([None, *steps]) if steps else None
    infos = [
        info(
            s,
            complete=rng.random() > 0.25,
            milestone=rng.random() < 0.1,
            scan_error="cannot read" if rng.random() < 0.05 else None,
            latest=s == latest,
            mtime_s=NOW_S - rng.choice([0, 30, 3599, 3600, 3601, 86400]),
        )
        for s in steps
    ]
    config = CheckpointConfig(
        keep_last_n=keep_last_n,
        dyn_ckpt_window=DynamicCheckpointWindow(*window) if window else None,
    )
    grace_s = rng.choice([IN_FLIGHT_GRACE_S, 60.0])
    plan = plan_retention(catalog(*infos, scanned_at_s=NOW_S), config, in_flight_grace_s=grace_s)
    _check_invariants(plan, infos, config)
    check_facts(plan)
    recent = {i.step for i in infos if not i.complete and NOW_S - i.mtime_s <= grace_s}
    assert recent <= {d.step for d in plan.to_keep}


def _check_invariants(
    plan: RetentionPlan, infos: list[CheckpointInfo], config: CheckpointConfig
) -> None:
    kept = {d.step for d in plan.to_keep}
    complete = [i.step for i in infos if i.complete]
    newest = max(complete, default=None)
    milestones = {
        i.step for i in infos if i.dynamic_milestone or config.is_dynamic_milestone(i.step)
    }
    assert {d.step for d in plan.decisions} == {i.step for i in infos}
    assert all(i.step in kept for i in infos if i.is_latest)
    assert milestones <= kept
    if newest is not None:
        assert newest in kept
    assert {i.step for i in infos if not i.complete and (newest is None or i.step > newest)} <= kept
    if config.keep_last_n <= 0:
        assert not plan.to_delete
    else:
        normal = sorted((s for s in complete if s not in milestones), reverse=True)
        assert set(normal[: config.keep_last_n]) <= kept
        for d in plan.to_delete:
            assert d.step not in milestones and d.step not in normal[: config.keep_last_n]
            assert newest is not None and d.step < newest
