"""The fixed checkpoint tree of the exact-output tests, with pinned sizes, ages and config.

``ckpt/`` as a run with ``interval = 100``, ``keep_last_n = 2`` and a power2 window ``0..2`` left
it, plus the things a real root collects::

    step_2      complete    milestone (flag recorded in metadata.json)   4 days old
    step_100    complete                                                 50 h
    step_200    complete                                                 30 h
    step_300    incomplete  (a save that was killed)                     20 h
    step_400    complete                                                 5 h
    step_500    complete    latest -> step_500                           2.5 h
    step_600    incomplete  (a save still being written)                 90 s
    step_best/  a directory that is not a checkpoint
    notes.txt   a file

Every checkpoint is a whole number of 0.1 MB plus directory entries (a few kB), so the sizes
``kf-ckpt`` prints do not depend on the filesystem's directory sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.files import update_latest
from tests._cli import NOW_S
from tests.checkpoint._trees import make_checkpoint, set_mtime

__all__ = ["NOW_S", "RECORDED_CONFIG", "build_fixed_tree", "set_mtime"]

RECORDED_CONFIG: dict[str, Any] = {
    "dir": "ckpt",
    "interval": 100,
    "keep_last_n": 2,
    "dyn_ckpt_window": {"start": 0, "stop": 2, "strategy": "power2"},
}

# step -> (complete, bytes per file (3 files), age in seconds)
CHECKPOINTS: dict[int, tuple[bool, int, int]] = {
    2: (True, 500_000, 4 * 86400),
    100: (True, 1_000_000, 50 * 3600),
    200: (True, 1_000_000, 30 * 3600),
    300: (False, 400_000, 20 * 3600),
    400: (True, 1_000_000, 5 * 3600),
    500: (True, 1_000_000, 9000),
    600: (False, 400_000, 90),
}
TOKENS_PER_STEP = 2_097_152

JOB_TOML = """\
[model]
dim = 64

[checkpoint]
dir = "ckpt"
interval = 100
keep_last_n = 1

[checkpoint.dyn_ckpt_window]
start = 0
stop = 2
"""


def build_fixed_tree(root: Path) -> Path:
    """Write the tree described in the module docstring under ``root``."""
    root.mkdir(parents=True)
    for step, (complete, size, age_s) in CHECKPOINTS.items():
        step_dir = make_checkpoint(
            root,
            step,
            complete=complete,
            milestone=True if step == 2 else None,
            tokens_seen=step * TOKENS_PER_STEP,
            config=RECORDED_CONFIG,
            files=2,
            size=size,
        )
        set_mtime(step_dir, NOW_S - age_s)
    update_latest(root, 500)
    (root / "step_best").mkdir()
    (root / "notes.txt").write_text("keep the 7b run\n")
    return root
