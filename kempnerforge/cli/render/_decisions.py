"""How ``kf-ckpt`` words a retention decision, from the facts the decision carries.

:func:`reason_text` names the reason (the ``why`` of the ``ls``, ``gc`` and ``plan`` tables);
:func:`decision_detail` is the one place: the ``detail`` of ``kf-ckpt gc --json``, the
``gc_detail`` of ``kf-ckpt ls --json`` (checkpoints and saves not yet published) and the ``why``
of a pending save's row in the ``ls`` table all come from it. Ages use
:func:`~kempnerforge.cli.render.human_age`, the formatter of ``ls``'s age column, so that one
save reads the same age everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from kempnerforge.checkpoint.store.decisions import Decision, MilestoneSource, Reason
from kempnerforge.checkpoint.store.layout import LEASE_NAME, PendingKind
from kempnerforge.checkpoint.store.lease import LeaseState, LeaseVerdict
from kempnerforge.cli.render._format import human_age, human_duration

__all__ = ["decision_detail", "lease_text", "milestone_text", "ordinal", "reason_text"]

_REASON_TEXT = {
    "latest": "latest",
    "milestone": "dynamic milestone",
    "corrupt": "corrupt: never deleted automatically",
    "in_flight": "in flight: a save may be writing it",
    "unreadable": "unreadable: kept until it can be judged",
    "within_keep_last_n": "within keep_last_n={}",
    "newest_complete": "newest complete",
    "keep_all": "keep_last_n={} keeps all",
    "pinned": "pinned",
    "no_policy": "no retention policy",
    "beyond_keep_last_n": "beyond keep_last_n={}",
    "abandoned_incomplete": "abandoned incomplete save",
}


def reason_text(reason: Reason, keep_last_n: int) -> str:
    """A retention reason in words, with the keep_last_n it was planned with."""
    text = _REASON_TEXT.get(str(reason))
    return str(reason).replace("_", " ") if text is None else text.format(keep_last_n)


def decision_detail(d: Decision) -> str:
    """The reason of ``d`` in words, with its facts: ``2nd newest of keep_last_n=3``."""
    if d.pending_kind is not None:
        return _pending_detail(d)
    return _DETAIL[d.reason](d)


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``12th``, ``13th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def milestone_text(source: MilestoneSource) -> str:
    """``dynamic milestone of window [0, 512] (power2)``, or of the flag in metadata.json."""
    if source.recorded:
        return "dynamic milestone recorded in metadata.json"
    return f"dynamic milestone of window [{source.start}, {source.stop}] ({source.strategy})"


def lease_text(verdict: LeaseVerdict) -> str:
    """What a save's lease says about its writer: ``pid 4242 on node-a is running``."""
    state, lease, age_s = verdict.state, verdict.lease, verdict.heartbeat_age_s
    if lease is None:
        if state is LeaseState.unreadable:
            return f"cannot read {LEASE_NAME}: {verdict.error or 'unknown error'}"
        return f"corrupt {LEASE_NAME}" if state is LeaseState.corrupt else f"no {LEASE_NAME}"
    who = f"pid {lease.pid} on {lease.host}"
    if state is LeaseState.running:
        return f"{who} is running"
    if state is LeaseState.exited:
        return f"{who} has exited"
    if state is LeaseState.rebooted:
        return f"{lease.host} rebooted since {who} wrote it"
    if age_s is None:  # heartbeat_unreadable: a corrupt mtime
        return f"{who}: heartbeat time unreadable"
    if state is LeaseState.ahead:
        return f"{who}: heartbeat dated {human_duration(-age_s)} ahead of the file system's clock"
    if state is LeaseState.stale:
        return f"{who}: last heartbeat {human_age(age_s)}"
    return f"{who}: heartbeat {human_age(age_s)}"


def _written(d: Decision) -> str:
    """``written 2 min ago``: how long ago its newest write was, at the scan."""
    return "written at an unknown time" if d.idle_s is None else f"written {human_age(d.idle_s)}"


def _state(d: Decision) -> str:
    """``complete``, or ``incomplete (no .metadata)`` / ``corrupt (...)``."""
    if d.complete:
        return "complete"
    return f"{'corrupt' if d.corrupt else 'incomplete'} ({d.incomplete_reason})"


def _in_flight(d: Decision) -> str:
    if d.newest_step is None:
        return f"{_state(d)}, no complete checkpoint yet: a save may be writing it"
    if d.step > d.newest_step:
        return f"{_state(d)}, newer than step {d.newest_step}: a save may be writing it"
    return f"{_state(d)}, {_written(d)}; a save may still be writing it"


def _pinned(d: Decision) -> str:
    return f"pinned{f': {d.pin_note}' if d.pin_note else ''}; {_state(d)}"


def _milestone(d: Decision) -> str:
    source = d.milestone or MilestoneSource(recorded=True)
    return f"{milestone_text(source)}; {_state(d)}"


_DETAIL: dict[Reason, Callable[[Decision], str]] = {
    Reason.latest: lambda d: f"target of latest; {_state(d)}",
    Reason.milestone: _milestone,
    Reason.pinned: _pinned,
    Reason.corrupt: lambda d: (
        f"corrupt ({d.incomplete_reason}); never deleted automatically: remove it by hand "
        "once it is no longer needed as evidence"
    ),
    Reason.in_flight: _in_flight,
    Reason.unreadable: lambda d: f"{d.scan_error}; kept until it can be judged",
    Reason.within_keep_last_n: lambda d: f"{ordinal(d.rank or 0)} newest of {d.keep_last_n}",
    Reason.newest_complete: lambda d: "the newest complete checkpoint",
    Reason.keep_all: lambda d: f"keep_last_n={d.keep_last_n} keeps every checkpoint",
    Reason.no_policy: lambda d: "no retention policy is known for this root; nothing is deleted",
    Reason.abandoned_incomplete: lambda d: f"{_state(d)}, older than step {d.newest_step}",
    Reason.beyond_keep_last_n: lambda d: f"older than the newest {d.keep_last_n} complete",
}
"""The detail of a checkpoint's decision, by its reason."""


def _pending_detail(d: Decision) -> str:
    """A save in flight (or abandoned), or an old copy set aside by a re-save."""
    if d.pending_kind is PendingKind.replaced:
        aside = f"old copy of step {d.step} set aside while a save replaced it"
        if d.superseded:
            return f"{aside}; step {d.step} is newer"
        return f"{aside}; the next gc or run puts it back"
    writer = d.writer or LeaseVerdict(state=LeaseState.missing)
    state = "complete but never published" if d.complete else "incomplete"
    if writer.live:
        return f"save of step {d.step} in flight: {lease_text(writer)}"
    if writer.live is False:
        return f"{state}; writer gone: {lease_text(writer)}"
    if d.reason is Reason.in_flight:  # no readable lease: judged by its mtime
        return f"{lease_text(writer)}, {_written(d)}; a save may still write it"
    return f"{state}; {lease_text(writer)}, {_written(d)}"
