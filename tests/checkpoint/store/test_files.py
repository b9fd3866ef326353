"""Temp names: one scheme for every file published by rename."""

from __future__ import annotations

import os

from kempnerforge.checkpoint.store.files import TempName, parse_temp_name, temp_name


def test_a_temp_name_says_what_it_becomes_and_who_writes_it() -> None:
    name = temp_name("metadata.json")
    assert name.startswith(".metadata.json.kf-tmp-")
    assert parse_temp_name(name) == TempName(
        final="metadata.json", host=os.uname().nodename, pid=os.getpid()
    )


def test_two_temp_names_of_one_process_differ() -> None:
    assert temp_name("latest") != temp_name("latest")


def test_other_names_are_not_temp_names() -> None:
    for name in ("metadata.json", ".metadata.json.tmp.12", ".x.kf-tmp-host.notapid.ab", "step_1"):
        assert parse_temp_name(name) is None
