"""The kempnerforge.checkpoint package re-exports its API lazily and stays torch-free."""

from __future__ import annotations

import subprocess
import sys


def test_checkpoint_package_reexports_lazily_without_torch():
    code = (
        "import sys, kempnerforge.checkpoint as c; "
        "names = [n for n in c.__all__ if n not in "
        "('CheckpointManager', 'AsyncCheckpointer', 'ExportResult', 'export_safetensors', "
        "'verify_export', 'inspect_checkpoint')]; "
        "[getattr(c, n) for n in names]; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "[getattr(c, n) for n in c.__all__]; "
        "assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
