"""Compatibility path: the train-state helpers live in
:mod:`kempnerforge.checkpoint.manager.train_state`.

KempnerForge code imports them from ``kempnerforge.checkpoint.state``; this module keeps that
path working and adds nothing.
"""

from kempnerforge.checkpoint.manager.train_state import *  # noqa: F403
from kempnerforge.checkpoint.manager.train_state import __all__  # noqa: F401
