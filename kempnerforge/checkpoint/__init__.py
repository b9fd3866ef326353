"""Checkpoint store: on-disk layout, scan, retention, manager and export.

Importing this package does not import torch; the manager and export modules do, lazily.
"""

from kempnerforge.checkpoint import layout

__all__ = ["layout"]
