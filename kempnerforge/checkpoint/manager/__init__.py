"""The training side: :class:`CheckpointManager` saves and resumes a run with DCP.

Owns the save path (sync and async flushes, publishing, ``latest``, retention after a save),
the load path (resolve, verify, read the train state, load the tensors) and ``train_state.pt``.

May import: torch, :mod:`kempnerforge.checkpoint.store`, :mod:`kempnerforge.checkpoint.export`
(the allowlisted DCP metadata reader), :mod:`kempnerforge.config`, :mod:`kempnerforge.errors`.
Nothing imports the manager except the package's lazy re-exports.

Example:
    >>> from kempnerforge.checkpoint.manager import CheckpointManager  # doctest: +SKIP
"""

from kempnerforge.checkpoint.manager._manager import CheckpointManager, Stateful

__all__ = ["CheckpointManager", "Stateful"]
