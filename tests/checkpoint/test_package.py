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


def test_the_module_paths_kempnerforge_users_import_keep_working():
    """Upstream code imports these paths; the restructure must not break them."""
    code = (
        "from kempnerforge.checkpoint.manager import CheckpointManager; "
        "from kempnerforge.checkpoint import CheckpointManager as M; "
        "assert M is CheckpointManager; "
        "import kempnerforge.checkpoint.state as s, kempnerforge.checkpoint.manager.train_state as t; "
        "assert s.load_train_state is t.load_train_state; "
        "import kempnerforge.config.checkpoint, kempnerforge.config.registry"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
