"""Fixtures of the ``kf-ckpt ls / gc / plan`` tests: a fixed checkpoint tree and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kempnerforge.cli._render import NOW_ENV
from kempnerforge.cli.main import cli
from tests.cli._tree import NOW_S, build_fixed_tree

KF_CKPT = str(Path(sys.executable).with_name("kf-ckpt"))


@pytest.fixture
def fixed_tree(tmp_path: Path) -> Path:
    """The tree of ``_tree.build_fixed_tree`` under ``tmp_path/ckpt``."""
    return build_fixed_tree(tmp_path / "ckpt")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``run_cli("ls", DIR, ...)``: invoke ``kf-ckpt`` in-process, stdout and stderr apart.

    Runs in ``tmp_path`` with the clock pinned to ``_tree.NOW_S``.
    """
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, list(args), env={NOW_ENV: str(NOW_S)}, catch_exceptions=False)

    return run


def run_installed(*args: str, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kf-ckpt`` script (next to this interpreter) with the pinned clock."""
    assert os.access(KF_CKPT, os.X_OK), f"{KF_CKPT} is not installed; run 'make install'"
    env = {**os.environ, NOW_ENV: str(NOW_S)}
    return subprocess.run(
        [KF_CKPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


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
