"""Fixtures every test folder shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from tests._cli import invoke


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    """``run_cli("ls", DIR, ...)``: ``kf-ckpt`` in-process, in ``tmp_path``, clock pinned."""
    monkeypatch.chdir(tmp_path)
    return invoke
