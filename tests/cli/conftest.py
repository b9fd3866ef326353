"""Fixtures of the ``kf-ckpt ls / gc / plan`` tests: a fixed checkpoint tree and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._cli import KF_CKPT, run_installed
from tests.cli._tree import build_fixed_tree

__all__ = ["KF_CKPT", "run_installed"]  # kept importable from here for the command tests


@pytest.fixture
def fixed_tree(tmp_path: Path) -> Path:
    """The tree of ``_tree.build_fixed_tree`` under ``tmp_path/ckpt``."""
    return build_fixed_tree(tmp_path / "ckpt")


@pytest.fixture
def make_immutable() -> Iterator[Callable[[Path], None]]:
    """``make_immutable(path)``: ``chattr +i`` on ``path``, undone after the test.

    Root ignores permission bits but not the immutable attribute: the OS refuses to rename or
    remove such a directory, a real failure for gc to report.
    """
    chattr = shutil.which("chattr")
    if chattr is None or os.geteuid() != 0:
        pytest.skip("needs root and chattr to make a directory the OS refuses to remove")
    marked: list[Path] = []

    def mark(path: Path) -> None:
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
        marked.append(path)

    try:
        yield mark
    finally:
        for path in marked:
            subprocess.run([chattr, "-i", str(path)], check=False)
