"""The ``kf-ckpt export`` view of an
:class:`~kempnerforge.checkpoint.export.exporter.ExportResult`: the summary line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kempnerforge.cli.render import human_bytes, plural

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.exporter import ExportResult

__all__ = ["export_summary"]


def export_summary(result: ExportResult) -> str:
    """``exported 291 tensors (16.1 GB, bfloat16) of step 1000 to out in 4 files, 88.2 s``."""
    which = f"step {result.step}" if result.step is not None else str(result.step_dir)
    return (
        f"exported {result.tensors} tensors ({human_bytes(result.size_bytes)}, {result.dtype}) "
        f"of {which} to {result.output} in {plural(len(result.files), 'file')}, "
        f"{result.elapsed_s:.1f} s" + ("; verified" if result.verified else "")
    )
