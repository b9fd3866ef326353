"""The table renderer of ls/gc/plan produces exactly tabulate's ``simple`` format."""

from __future__ import annotations

import random

import pytest
from tabulate import tabulate

from kempnerforge.cli.render import render_table


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


def test_cells_of_any_type_are_rendered_with_str():
    from kempnerforge.checkpoint.store.retention import Action

    rows = [
        (1, Action.keep, 2.5, True, "None", None),
        (22, Action.delete, -0.0, False, "x", "y"),
    ]
    expected_cells = [tuple("" if c is None else str(c) for c in row) for row in rows]
    assert expected_cells[0][1] == "keep"  # a StrEnum renders as its value
    headers = ("n", "gc", "f", "b", "s", "t")
    assert render_table(rows, headers, "rlrlll") == _reference(expected_cells, headers, "rlrlll")


def test_a_row_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        render_table([("a", "b"), ("c",)], ("x", "y"), "ll")
