"""The table renderer of ls/gc/plan produces exactly tabulate's ``simple`` format."""

from __future__ import annotations

import random

import pytest
from tabulate import tabulate

from kempnerforge.cli._render import render_table


def _reference(rows, headers, align):
    colalign = tuple("right" if a == "r" else "left" for a in align)
    return tabulate(
        rows, headers=headers, tablefmt="simple", disable_numparse=True, colalign=colalign
    )


@pytest.mark.parametrize("seed", range(20))
def test_matches_tabulate_simple(seed):
    rng = random.Random(seed)
    ncols = rng.randint(1, 8)
    headers = tuple(rng.choice(["step", "size", "why", "gc", "a", "status"]) for _ in range(ncols))
    align = "".join(rng.choice("rl") for _ in range(ncols))
    words = ["", "1", "146.3 kB", "complete", "keep", "within keep_last_n=3", "x" * 30, "3 s ago"]
    rows = [tuple(rng.choice(words) for _ in range(ncols)) for _ in range(rng.randint(0, 12))]
    assert render_table(rows, headers, align) == _reference(rows, headers, align)


def test_none_is_an_empty_cell_and_numbers_are_strings():
    rows = [(1, None, "a"), (22, "b", None)]
    assert render_table(rows, ("n", "x", "y"), "rll") == _reference(
        [(str(a), "" if b is None else b, "" if c is None else c) for a, b, c in rows],
        ("n", "x", "y"),
        "rll",
    )
