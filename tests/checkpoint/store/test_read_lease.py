"""Read leases: a checkpoint being read is not deleted under its reader by a gc in another
process, also when the reader holds several leases on one root (POSIX record locks belong to
the process, and closing any descriptor of the file would drop them all)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kempnerforge.checkpoint.store.resolve import leased, leased_checkpoint
from tests.checkpoint._trees import make_root

GC = (
    "import sys; from kempnerforge.checkpoint.store.collect import collect_garbage; "
    "from kempnerforge.config.checkpoint import CheckpointConfig; "
    "collect_garbage(sys.argv[1], CheckpointConfig(keep_last_n=1))"
)


def _gc_in_another_process(root: Path) -> None:
    subprocess.run([sys.executable, "-c", GC, str(root)], check=True, timeout=120)


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in root.glob("step_*"))


def test_gc_skips_a_leased_checkpoint_and_collects_it_once_released(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [1, 2, 3, 4], latest=4)
    with leased_checkpoint(root, 1) as step_dir:
        assert step_dir == root / "step_1"
        _gc_in_another_process(root)
        assert _steps(root) == [1, 4]
    _gc_in_another_process(root)
    assert _steps(root) == [4]


def test_ending_one_lease_keeps_the_others_of_the_process(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ckpt", [1, 2, 3, 4], latest=4)
    with leased(root / "step_1"), leased(root / "step_2"):
        with leased(root / "step_2"):  # nested on the same step: counted, not re-locked
            pass
        with leased(root / "step_3"):
            pass  # its descriptor is shared: closing nothing here drops step_1 or step_2
        _gc_in_another_process(root)
        assert _steps(root) == [1, 2, 4]
    _gc_in_another_process(root)
    assert _steps(root) == [4]
