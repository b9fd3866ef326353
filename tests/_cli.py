"""Running ``kf-ckpt`` from tests: in-process through Click, or as the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from kempnerforge.cli.main import cli
from kempnerforge.cli.render import NOW_ENV

KF_CKPT = str(Path(sys.executable).with_name("kf-ckpt"))
"""The installed console script, next to this interpreter."""

NOW_S = 1_700_000_000.0
"""The pinned clock of CLI tests (``$KF_CKPT_NOW_S``), so that ages print the same every run."""


def invoke(*args: str, now_s: float | None = NOW_S) -> Result:
    """``kf-ckpt ARGS`` in-process, stdout and stderr apart, exceptions not swallowed."""
    env = {} if now_s is None else {NOW_ENV: str(now_s)}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def run_installed(*args: str, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kf-ckpt`` script with the pinned clock."""
    assert os.access(KF_CKPT, os.X_OK), f"{KF_CKPT} is not installed; run 'make install'"
    env = {**os.environ, NOW_ENV: str(NOW_S)}
    return subprocess.run(
        [KF_CKPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
