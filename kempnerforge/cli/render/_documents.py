"""What the ``ls``, ``gc`` and ``plan`` views share: the config's JSON, the skipped entries, and
the warnings about a scanned root."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kempnerforge.cli.render._format import plural
from kempnerforge.config.loader import config_to_dict

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.records import Catalog
    from kempnerforge.checkpoint.store.selection import ConfigSelection

__all__ = ["FORMAT_VERSION", "catalog_warnings", "config_document", "skipped_document"]

FORMAT_VERSION = 1
"""``format_version`` of the JSON documents that have no version of their own."""


def config_document(selection: ConfigSelection) -> dict[str, Any]:
    """The ``config`` object of a document: where the config came from, and its values."""
    path = selection.source_path
    return {
        "source": selection.source,
        "path": None if path is None else str(path),
        "checkpoint": config_to_dict(selection.config),
        "has_policy": selection.has_policy,
    }


def skipped_document(catalog: Catalog) -> list[dict[str, Any]]:
    """The entries of the root that the scan passed over, and why."""
    return [
        {"name": s.name, "path": str(s.path), "reason": s.reason, "toolkit_entry": s.toolkit_entry}
        for s in catalog.skipped
    ]


def catalog_warnings(catalog: Catalog) -> list[str]:
    """Skipped entries (not the toolkit's own), an ignored ``latest``, unreadable metadata."""
    lines = [
        f"skipped {s.name}: {s.reason}"
        for s in catalog.skipped
        if not s.toolkit_entry and not s.dcp_checkpoint
    ]
    foreign = [s for s in catalog.skipped if s.dcp_checkpoint]
    if foreign:
        names = ", ".join(s.name for s in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        lines.append(
            f"{plural(len(foreign), 'DCP checkpoint')} not named step_<N> ({names}), written by "
            f"another tool (torchtitan writes step-N) or renamed: not managed here (gc never "
            f"touches them), but 'kf-ckpt export' and 'kf-ckpt show' work on each, e.g. "
            f"'kf-ckpt show {foreign[-1].path}'"
        )
    lines += catalog.warnings
    for info in catalog.checkpoints:
        if info.warnings:
            lines += [f"{info.name}: {warning}" for warning in info.warnings]
        if info.corrupt:
            lines.append(
                f"{info.name} is corrupt ({info.incomplete_reason}); it is never deleted "
                f"automatically: inspect it, then remove it by hand (rm -r {info.path})"
            )
    return lines
